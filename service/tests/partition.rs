//! The service's core driven in-process, without a broker (as Arroyo's operator tests drive an
//! operator with a collector): a [`Partition`] is fed decoded records and its outputs collected.
//!
//! - every library pattern's examples give exactly the expected alerts;
//! - a partition checkpointed through its changelog records ([`Partition::take_changes`]) at
//!   any point, with its keys dropped from memory and read back from the store, and restored
//!   into a fresh one ([`Partition::open`], [`Partition::index`]) emits the same bytes as one
//!   that ran straight through: what makes the service exactly once across crashes;
//! - late events are refused and counted, never fed;
//! - a switch to another pattern set mid-stream follows the in-flight policy (the replaced
//!   version finishes its partial matches, every record starts matches in exactly one version,
//!   none is lost), and a switched partition restored at any point goes on byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::runtime::After;
use engine::runtime::Config as OpConfig;
use serde_json::Value;
use tripline_service::core::changelog::{Changes, MemoryState};
use tripline_service::core::config::Config;
use tripline_service::core::coords::{seq_of, watermark_of};
use tripline_service::core::partition::{Emit, Partition};
use tripline_service::core::pattern_sets::{compile_files, compile_sources};
use tripline_service::core::plan::{admit, build_plans, key_bucket, LiveKeys, Stage, StreamPlan, BUCKETS};
use tripline_service::core::repartition::Marker;
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
    let plans = build_plans(&cfg.streams, &path, &catalog, &set.nfas, &cfg.kafka.group_id).expect("plans");
    // In one partition, whatever the pattern's key.
    let plan = plans.into_values().find(|p| !p.patterns.is_empty()).expect("one stream").direct();
    (cfg, catalog, plan)
}

/// A partition with the library's reference tables (from their files, as `tripline.toml`
/// declares them), as the service installs them.
fn tabled(mut part: Partition) -> Partition {
    static TABLES: std::sync::OnceLock<engine::RefData> = std::sync::OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        let path = root().join("tripline.toml");
        let cfg = Config::load(&path).expect("config");
        tripline_service::core::tables::load(&cfg, &path).expect("the library's tables")
    });
    part.set_reference(tables);
    part
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
        let mut part = tabled(Partition::new(plan, 0, OpConfig::default())).without_change_tracking();
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
        let mut part = tabled(Partition::new(plan.clone(), 0, OpConfig::default())).without_change_tracking();
        feed(&mut part, &cfg, &events, &mut straight);
        part.finish(&mut straight);
        // Kept in a store and checkpointed after every event (the changelog: latest value per
        // key); every key dropped from memory after every other event; and replaced at every
        // third by a partition opened from the store or restored from the changelog: each must
        // pick up exactly there.
        let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut store = Arc::new(MemoryState::default());
        let mut emitted = Vec::new();
        let mut part = tabled(Partition::new(plan.clone(), 0, OpConfig::default()));
        part.open(store.clone(), &|_| None).expect("an empty store opens");
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
                let mut fresh = tabled(Partition::new(plan.clone(), 0, OpConfig::default()));
                if i % 2 == 0 {
                    // From the changelog, into a new store.
                    let records: Vec<(Vec<u8>, Vec<u8>)> = changelog.clone().into_iter().collect();
                    let (local, summary) = fresh.index(&records, &|_| None).expect("indexes");
                    assert!(summary.meta && summary.stale == 0, "{name}: {summary:?}");
                    store = Arc::new(MemoryState(std::sync::Mutex::new(local.into_iter().collect())));
                }
                let summary = fresh.open(store.clone(), &|_| None).expect("opens");
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
    let mut part = tabled(Partition::new(plan.clone(), 0, OpConfig::default())).without_change_tracking();
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

/// The plan of `pattern`'s stream with that pattern alone, its source edited by `edit`.
fn plan_edited(pattern: &str, edit: &dyn Fn(String) -> String) -> Arc<StreamPlan> {
    let path = root().join("tripline.toml");
    let cfg = Config::load(&path).expect("config");
    let catalog = cfg.catalog(&path).expect("catalog");
    let text = std::fs::read_to_string(root().join(format!("patterns/{pattern}.tl"))).expect("pattern");
    let src = dsl::SourceFile::new(format!("{pattern}.tl"), edit(text));
    let set = compile_sources(vec![src], 0, &catalog, &mut |d| panic!("{d}")).expect("compiles");
    let plans = build_plans(&cfg.streams, &path, &catalog, &set.nfas, &cfg.kafka.group_id).expect("plans");
    plans.into_values().find(|p| !p.patterns.is_empty()).expect("one stream").direct()
}

/// Another version of the pattern: its declared version + 100 (another content hash).
fn next_version(text: String) -> String {
    let at = text.find("\n  version ").expect("a version line") + "\n  version ".len();
    let end = at + text[at..].find('\n').expect("end of line");
    let v: u32 = text[at..end].trim().parse().expect("a number");
    format!("{}{}{}", &text[..at], v + 100, &text[end..])
}

/// (pattern version, key, matched offsets) of each alert line.
fn matches(lines: &[String]) -> Vec<(u64, String, Vec<i64>)> {
    let mut out: Vec<(u64, String, Vec<i64>)> = lines
        .iter()
        .map(|l| {
            let a: Value = serde_json::from_str(l).expect("JSON");
            let mut offsets: Vec<i64> = a["match"]
                .as_object()
                .expect("match")
                .values()
                .flat_map(|v| v.as_array().expect("offsets").iter().map(|o| o.as_i64().expect("offset")))
                .collect();
            offsets.sort_unstable();
            (a["version"].as_u64().expect("version"), a["key"].as_str().expect("key").to_owned(), offsets)
        })
        .collect();
    out.sort();
    out
}

/// A payment of the rapid_movement examples' shape.
fn payment(
    catalog: &dsl::Catalog,
    account: &str,
    direction: &str,
    amount: f64,
    to: &str,
    ts: i64,
    offset: u64,
) -> engine::Event {
    let value = serde_json::json!({
        "payment_id": format!("PAY-{offset}"), "account_id": account, "customer_id": "CUS-1",
        "counterparty_account_id": to, "counterparty_name": null, "counterparty_country": "DE",
        "direction": direction, "amount": amount, "currency": "EUR", "channel": "TRANSFER", "country": "DE",
        "branch_id": null, "reference": null, "event_time": ts,
    });
    dsl::json_event(&catalog.streams["payments"], Some("Payment"), &value, offset).expect("a payment")
}

/// The bug a switch had: the replaced version's operator was dropped with the events it still
/// buffered ahead of the watermark, and the new version started at the watermark, so events
/// read just before the switch reached neither. Now each is seen by exactly one version.
#[test]
fn events_read_just_before_a_switch_are_seen_by_exactly_one_version() {
    let (cfg, catalog, old) = plan_of("rapid_movement");
    let new = plan_edited("rapid_movement", &next_version);
    let (v_old, v_new) = (old.patterns[0].meta.version as u64, new.patterns[0].meta.version as u64);
    let t = 1_740_990_600_000;
    let events = [
        payment(&catalog, "ACC-A", "IN", 10_000.0, "SENDER", t, 0),
        // Another account's small payment, a minute on: the watermark moves to t + 55 s - 1 ms.
        payment(&catalog, "ACC-X", "OUT", 10.0, "SHOP", t + 60_000, 1),
        // Read before the switch, but ahead of the watermark: buffered when the switch comes.
        payment(&catalog, "ACC-B", "IN", 10_000.0, "SENDER", t + 58_000, 2),
        // The switch is here, before offset 3.
        payment(&catalog, "ACC-A", "OUT", 9_000.0, "MULE", t + 61_000, 3),
        payment(&catalog, "ACC-B", "OUT", 9_000.0, "MULE", t + 62_000, 4),
        payment(&catalog, "ACC-C", "IN", 10_000.0, "SENDER", t + 63_000, 5),
        payment(&catalog, "ACC-C", "OUT", 9_000.0, "MULE", t + 64_000, 6),
        payment(&catalog, "ACC-X", "OUT", 10.0, "SHOP", t + 3_600_000, 7),
    ];
    let mut emit = Vec::new();
    let mut part = tabled(Partition::new(old.clone(), 0, OpConfig::default())).without_change_tracking();
    feed(&mut part, &cfg, &events[..3], &mut emit);
    assert!(part.is_late(t) && !part.is_late(t + 58_000), "ACC-B's credit is ahead of the watermark");
    let mut part = part.with_plan(new.clone(), 3);
    feed(&mut part, &cfg, &events[3..], &mut emit);
    assert!(part.draining().all(|o| o.drained()), "the old version finished: it goes at the next commit");
    let got = matches(&alert_lines(&emit));
    assert_eq!(
        got,
        vec![
            (v_old, "ACC-A".to_owned(), vec![0, 3]),
            (v_old, "ACC-B".to_owned(), vec![2, 4]),
            (v_new, "ACC-C".to_owned(), vec![5, 6]),
        ],
        "A and B began before the switch (the old version finishes them), C after it (the new version)"
    );
}

/// A switch from each library pattern's version to another one halfway through its examples,
/// and (in a second run) straight back: every record starts matches in exactly one version,
/// the new version raises what it raises alone from the switch on, a partition checkpointed,
/// evicted and restored (from the store or the changelog) at every record emits what one that
/// ran straight through does, and so does one switched by restoring its stored state under the
/// new set (a partition moving to an instance that runs the new set).
#[test]
fn a_switched_partition_follows_the_policy_and_restores_byte_for_byte() {
    // Alerts of a replaced version completed after its switch: partial matches it finished.
    let mut finished_after_switch = 0;
    for name in library() {
        let (cfg, catalog, a) = plan_of(&name);
        let b = plan_edited(&name, &next_version);
        let events = examples(&name, &catalog);
        let k = events.len() / 2;
        let resolve = |h: &str| a.patterns.iter().chain(&b.patterns).find(|n| n.meta.hash == h).cloned();
        // (offset, plan) switches: A -> B at k; A -> B at k and back to A at k + 1; a canary of B
        // (live on half the keys, A on the others) at k, promoted at k + 2.
        let canary = canary_plan(&cfg, &a, &b, 5_000);
        let schedules: [Vec<(usize, &Arc<StreamPlan>)>; 3] =
            [vec![(k, &b)], vec![(k, &b), (k + 1, &a)], vec![(k, &canary), (k + 2, &b)]];
        for (s, switches) in schedules.iter().enumerate() {
            // `checkpoint`: stored and restored at every third record; `by_restore`: each switch
            // made by opening the stored state under the new set (a partition that moves to an
            // instance running another set) instead of in place.
            let run = |checkpoint: bool, by_restore: bool| -> Vec<Emit> {
                let mut emitted = Vec::new();
                let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
                let mut store = Arc::new(MemoryState::default());
                let mut part = tabled(Partition::new(a.clone(), 0, OpConfig::default()));
                part.open(store.clone(), &resolve).expect("an empty store opens");
                for (i, e) in events.iter().enumerate() {
                    for (_, plan) in switches.iter().filter(|(at, _)| *at == i) {
                        if by_restore {
                            let mut fresh = tabled(Partition::new((*plan).clone(), 0, OpConfig::default()));
                            fresh.open(store.clone(), &resolve).expect("opens under the new set");
                            assert_eq!(fresh.next_offset, i as i64);
                            part = fresh;
                        } else {
                            part = part.with_plan((*plan).clone(), i as i64);
                        }
                    }
                    feed(&mut part, &cfg, std::slice::from_ref(e), &mut emitted);
                    part.next_offset = i as i64 + 1;
                    commit(&mut part, &store, &mut changelog);
                    if checkpoint && i % 2 == 1 {
                        part.evict(0);
                    }
                    if checkpoint && i % 3 == 2 {
                        let mut fresh = tabled(Partition::new(part.plan.clone(), 0, OpConfig::default()));
                        if i % 2 == 0 {
                            let records: Vec<(Vec<u8>, Vec<u8>)> = changelog.clone().into_iter().collect();
                            let (local, summary) = fresh.index(&records, &resolve).expect("indexes");
                            assert_eq!(summary.stale, 0, "{name}");
                            store = Arc::new(MemoryState(std::sync::Mutex::new(local.into_iter().collect())));
                        }
                        let summary = fresh.open(store.clone(), &resolve).expect("opens");
                        assert_eq!(summary.stale, 0, "{name}");
                        let held = |p: &Partition| {
                            p.all_operators()
                                .map(|o| {
                                    (
                                        o.nfa().meta.hash.clone(),
                                        o.draining().cloned(),
                                        o.active_keys(),
                                        o.active_partial_matches(),
                                    )
                                })
                                .collect::<Vec<_>>()
                        };
                        assert_eq!(held(&fresh), held(&part), "{name}: the operators, draining ones included");
                        part = fresh;
                    }
                }
                part.finish(&mut emitted);
                assert!(part.take_store_error().is_none());
                emitted
            };
            let straight = run(false, false);
            assert_eq!(
                run(true, false),
                straight,
                "{name} (schedule {s}): restored partitions emit what one straight run does"
            );
            assert_eq!(run(false, true), straight, "{name} (schedule {s}): a switch by restore is the same switch");
            // Which version raised what: a replaced version only finishes partial matches that
            // began before it was replaced (offset below its switch).
            let lines = alert_lines(&straight);
            let (va, vb) = (a.patterns[0].meta.version as u64, b.patterns[0].meta.version as u64);
            for (v, key, offsets) in matches(&lines) {
                let first = offsets[0];
                let ok = match (s, v) {
                    (0, v) if v == va => first < k as i64,
                    (0, _) => first >= k as i64,
                    // B ran for one record: what it began there, A all else.
                    (1, v) if v == vb => first == k as i64,
                    (1, _) => first != k as i64,
                    // A ran alone before the canary, B alone from its promotion.
                    (_, v) if v == va => first < k as i64 + 2,
                    _ => first >= k as i64,
                };
                assert!(ok, "{name} (schedule {s}): version {v} raised {key} {offsets:?}");
                if s == 0 && v == va && *offsets.last().unwrap_or(&0) >= k as i64 {
                    finished_after_switch += 1;
                }
            }
            if s == 0 {
                // B raises exactly what it raises alone from the switch on (from the watermark).
                let mut alone = Vec::new();
                let mut before = tabled(Partition::new(a.clone(), 0, OpConfig::default())).without_change_tracking();
                feed(&mut before, &cfg, &events[..k], &mut alone);
                let mut only_b = tabled(Partition::new(b.clone(), 0, OpConfig::default())).without_change_tracking();
                only_b.resume_at(before.watermark());
                let mut alone = Vec::new();
                for e in &events[k..] {
                    if !only_b.is_late(e.ts) {
                        feed(&mut only_b, &cfg, std::slice::from_ref(e), &mut alone);
                    }
                }
                only_b.finish(&mut alone);
                let from_b: Vec<String> =
                    lines.iter().filter(|l| l.contains(&format!("\"version\":{vb},"))).cloned().collect();
                assert_eq!(matches(&from_b), matches(&alert_lines(&alone)), "{name}: the new version's alerts");
            }
        }
    }
    assert!(finished_after_switch >= 3, "the examples exercise draining: {finished_after_switch}");
}

/// A plan running both `a`'s and `b`'s pattern: `b` live on the keys in buckets below `bp`,
/// `a` on the others (a canary of `b`).
fn canary_plan(cfg: &Config, a: &Arc<StreamPlan>, b: &Arc<StreamPlan>, bp: u16) -> Arc<StreamPlan> {
    let nfas: Vec<_> = a.patterns.iter().chain(&b.patterns).cloned().collect();
    let live = BTreeMap::from([
        (a.patterns[0].meta.hash.clone(), LiveKeys { from: bp, to: BUCKETS }),
        (b.patterns[0].meta.hash.clone(), LiveKeys { from: 0, to: bp }),
    ]);
    StreamPlan::new(&a.name, &cfg.streams[&a.name], a.schema.clone(), &nfas).exposed(&live)
}

/// A canary runs both versions on every key: each match is raised by both, live by exactly one:
/// the new version on the keys of its share, the old one on the others.
#[test]
fn a_canary_is_live_on_its_share_of_the_keys_and_shadow_on_the_others() {
    for name in ["structuring", "rapid_movement", "mule_fan_in"] {
        let (cfg, catalog, a) = plan_of(name);
        let b = plan_edited(name, &next_version);
        let bp = 5_000;
        let plan = canary_plan(&cfg, &a, &b, bp);
        let mut part = tabled(Partition::new(plan.clone(), 0, OpConfig::default())).without_change_tracking();
        let mut emit = Vec::new();
        feed(&mut part, &cfg, &examples(name, &catalog), &mut emit);
        part.finish(&mut emit);
        let mut by_match: BTreeMap<(String, String), Vec<(u64, bool)>> = BTreeMap::new();
        for e in &emit {
            let Emit::Alert { json, shadow, key, .. } = e else { continue };
            let v: Value = serde_json::from_str(json).expect("JSON");
            assert_eq!(v["mode"], if *shadow { "shadow" } else { "live" }, "{json}");
            by_match
                .entry((key.clone(), v["match"].to_string()))
                .or_default()
                .push((v["version"].as_u64().expect("v"), *shadow));
        }
        assert!(!by_match.is_empty(), "{name}: the examples alert");
        let vb = b.patterns[0].meta.version as u64;
        for ((key, m), alerts) in &by_match {
            assert_eq!(alerts.len(), 2, "{name} {key} {m}: both versions raise it: {alerts:?}");
            let live: Vec<u64> = alerts.iter().filter(|(_, shadow)| !shadow).map(|(v, _)| *v).collect();
            let canary_key = key_bucket(key) < bp;
            assert_eq!(live.len(), 1, "{name} {key} {m}: live in exactly one version: {alerts:?}");
            assert_eq!(live[0] == vb, canary_key, "{name} {key}: bucket {} vs {bp}", key_bucket(key));
        }
    }
}

/// A commit of `part`: its changes to the store and to the changelog (latest value per key).
fn commit(part: &mut Partition, store: &MemoryState, changelog: &mut BTreeMap<Vec<u8>, Vec<u8>>) {
    let mut changes = Changes::default();
    part.take_changes(&mut changes);
    store.apply(&changes);
    for (key, v) in changes.records {
        match v {
            Some(v) => changelog.insert(key, v),
            None => changelog.remove(&key),
        };
    }
}

/// `plan` as a repartition topic's plan: its watermark comes from the source partitions'
/// markers (see `core::repartition`).
fn repartitioned(plan: &Arc<StreamPlan>) -> Arc<StreamPlan> {
    let stage = Stage::Repartitioned { source_topic: plan.topic.clone(), field: "key".into() };
    Arc::new(StreamPlan { stage, topic: format!("g.{}.by-key", plan.name), ..(**plan).clone() })
}

/// The content of alert lines, without where their events were (id, partitions, offsets).
fn contents(emit: &[Emit]) -> Vec<Value> {
    let mut v: Vec<Value> = alert_lines(emit)
        .iter()
        .map(|l| {
            let mut a: Value = serde_json::from_str(l).expect("JSON");
            for k in ["alert_id", "partition", "partitions", "match"] {
                a.as_object_mut().expect("object").remove(k);
            }
            a
        })
        .collect();
    v.sort_by_key(Value::to_string);
    v
}

/// Every library pattern run as a repartition topic's partition over its examples, read from
/// three source partitions (event `i` is record `i / 3` of partition `i % 3`), each followed by
/// its partition's watermark marker, as the source stage writes them:
/// - it raises what the pattern raises over the examples in one partition, and its alerts name
///   each event's source partition;
/// - its watermark waits for every source partition, and an idle one stops holding it back;
/// - switched to another version halfway, the replaced one drains with the read position of
///   each source partition, and a partition checkpointed and restored (store or changelog) at
///   every record emits the bytes of one that ran straight through.
#[test]
fn a_repartition_topics_partition_follows_its_markers_and_restores_byte_for_byte() {
    const LANES: i32 = 3;
    for name in library() {
        let (cfg, catalog, direct) = plan_of(&name);
        let (a, b) = (repartitioned(&direct), repartitioned(&plan_edited(&name, &next_version)));
        let events: Vec<engine::Event> = examples(&name, &catalog)
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.seq = seq_of(i as i32 % LANES, i as i64 / LANES as i64);
                e
            })
            .collect();
        let resolve = |h: &str| a.patterns.iter().chain(&b.patterns).find(|n| n.meta.hash == h).cloned();
        // The reference: the examples in one partition, windows closed at the end.
        let mut reference = Vec::new();
        let mut one = tabled(Partition::new(direct.clone(), 0, OpConfig::default()));
        feed(&mut one, &cfg, &examples(&name, &catalog), &mut reference);
        one.finish(&mut reference);
        let marker = |from: i32, watermark: i64| Marker { from, partitions: LANES, watermark, idle: false };
        let k = events.len() / 2;
        let run = |switch: bool, checkpoint: bool| -> Vec<Emit> {
            let mut emitted = Vec::new();
            let mut changelog: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let store = Arc::new(MemoryState::default());
            let mut part = tabled(Partition::new(a.clone(), 0, OpConfig::default()));
            part.open(store.clone(), &resolve).expect("an empty store opens");
            let mut newest = [i64::MIN; LANES as usize];
            for (i, e) in events.iter().enumerate() {
                if switch && i == k {
                    part = part.with_plan(b.clone(), i as i64 * 2);
                    if let Some(d) = part.draining().next().and_then(|o| o.draining()) {
                        let lanes: Vec<(u16, u64)> = (0..LANES.min(i as i32))
                            .map(|l| (l as u16, seq_of(l, (i as i64 - 1 - i64::from(l)) / LANES as i64 + 1)))
                            .collect();
                        assert_eq!(d.after, After::Lanes(Arc::new(lanes.into_iter().collect())), "{name}");
                    }
                }
                let lane = i as i32 % LANES;
                feed(&mut part, &cfg, std::slice::from_ref(e), &mut emitted);
                newest[lane as usize] = newest[lane as usize].max(e.ts);
                let wm = watermark_of(newest[lane as usize], a.out_of_orderness);
                part.mark(marker(lane, wm), &mut emitted);
                if i < LANES as usize - 1 {
                    assert_eq!(part.watermark(), i64::MIN, "{name}: a source partition has said nothing yet");
                }
                part.next_offset = i as i64 * 2 + 2;
                commit(&mut part, &store, &mut changelog);
                if checkpoint {
                    let mut fresh = tabled(Partition::new(part.plan.clone(), 0, OpConfig::default()));
                    if i % 2 == 0 {
                        let records: Vec<(Vec<u8>, Vec<u8>)> = changelog.clone().into_iter().collect();
                        let (local, _) = fresh.index(&records, &resolve).expect("indexes");
                        let from_changelog = Arc::new(MemoryState(std::sync::Mutex::new(local.into_iter().collect())));
                        fresh.open(from_changelog, &resolve).expect("opens");
                    } else {
                        fresh.open(store.clone(), &resolve).expect("opens");
                    }
                    assert_eq!(fresh.upstreams(), part.upstreams(), "{name}: the markers and read positions");
                    assert_eq!(fresh.watermark(), part.watermark());
                    let drains = |p: &Partition| p.draining().map(|o| o.draining().cloned()).collect::<Vec<_>>();
                    assert_eq!(drains(&fresh), drains(&part), "{name}: the drains");
                    part = fresh;
                }
            }
            // Lanes 1 and 2 go idle, lane 0 moves on: its watermark alone counts.
            for l in 1..LANES {
                part.mark(Marker { idle: true, ..marker(l, i64::MIN) }, &mut emitted);
            }
            part.mark(marker(0, i64::MAX - 1), &mut emitted);
            assert_eq!(part.watermark(), i64::MAX - 1, "{name}: idle source partitions do not hold it back");
            emitted
        };
        let straight = run(false, false);
        assert_eq!(contents(&straight), contents(&reference), "{name}: as in one partition");
        for line in alert_lines(&straight) {
            let a: Value = serde_json::from_str(&line).expect("JSON");
            let parts = a["partitions"].as_object().expect("partitions of the events");
            let offsets = a["match"].as_object().expect("match");
            assert_eq!(parts.keys().collect::<Vec<_>>(), offsets.keys().collect::<Vec<_>>(), "{name}");
        }
        let switched = run(true, false);
        assert_eq!(alert_lines(&run(true, true)), alert_lines(&switched), "{name}: restored at every record");
        assert_eq!(alert_lines(&run(false, true)), alert_lines(&straight), "{name}: restored at every record");
    }
}
