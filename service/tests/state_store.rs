//! State beyond memory, driven in-process (no broker): a partition whose keys live in a store
//! and only a bounded cache of them in memory gives exactly the outputs of one that holds every
//! key in memory, through commits, evictions, timers of keys that are not in memory, rewinds to
//! the last commit and restores from the changelog; and one key's state has no size limit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::runtime::Config as OpConfig;
use engine::Event;
use serde_json::Value;
use tripline_service::core::changelog::{Changes, MemoryState};
use tripline_service::core::config::Config;
use tripline_service::core::partition::{Emit, Partition};
use tripline_service::core::pattern_sets::compile_files;
use tripline_service::core::plan::{build_plans, StreamPlan};
use tripline_service::tools::bench_env::payments;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("service/ is in the repository").to_owned()
}

/// The payments stream's plan with the given pattern files.
fn payments_plan(files: &[PathBuf]) -> Arc<StreamPlan> {
    let path = root().join("tripline.toml");
    let cfg = Config::load(&path).expect("config");
    let catalog = cfg.catalog(&path).expect("catalog");
    let set = compile_files(files, &catalog, &mut |d| panic!("{d}")).expect("compiles");
    let plans = build_plans(&cfg.streams, &path, &catalog, &set.nfas, &cfg.kafka.group_id).expect("plans");
    plans.into_values().find(|p| p.name == "payments").expect("the payments stream")
}

/// Events from the generator's JSON lines.
fn events(plan: &StreamPlan, lines: &str) -> Vec<Event> {
    lines
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).expect("JSON");
            dsl::json_event(&plan.schema, Some("Payment"), &v["value"], i as u64).expect("an event")
        })
        .collect()
}

/// The store a partition commits to, and its changelog (latest value per key).
struct Committed {
    store: Arc<MemoryState>,
    changelog: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Committed {
    fn new() -> Self {
        Committed { store: Arc::new(MemoryState::default()), changelog: BTreeMap::new() }
    }

    /// Commits what changed (the store is written as the service writes it after a commit).
    fn commit(&mut self, part: &mut Partition) -> Changes {
        let mut changes = Changes::default();
        part.take_changes(&mut changes);
        self.store.apply(&changes);
        for (k, v) in &changes.records {
            match v {
                Some(v) => self.changelog.insert(k.clone(), v.clone()),
                None => self.changelog.remove(k),
            };
        }
        changes
    }

    /// A partition as the service rebuilds it from the store after an abort or a restart.
    fn reopen(&self, plan: &Arc<StreamPlan>) -> Partition {
        let mut part = Partition::new(plan.clone(), 0, OpConfig::default());
        part.open(self.store.clone(), &|_| None).expect("opens");
        part
    }

    /// A partition restored from the changelog into a new store (another instance).
    fn restore_elsewhere(&mut self, plan: &Arc<StreamPlan>) -> Partition {
        let mut part = Partition::new(plan.clone(), 0, OpConfig::default());
        let records: Vec<(Vec<u8>, Vec<u8>)> = self.changelog.clone().into_iter().collect();
        let (local, summary) = part.index(&records, &|_| None).expect("indexes");
        assert!(summary.meta, "{summary:?}");
        self.store = Arc::new(MemoryState(std::sync::Mutex::new(local.into_iter().collect())));
        part.open(self.store.clone(), &|_| None).expect("opens");
        part
    }
}

fn straight(plan: &Arc<StreamPlan>, events: &[Event]) -> Vec<Emit> {
    let mut part = Partition::new(plan.clone(), 0, OpConfig::default()).without_change_tracking();
    let mut emit = Vec::new();
    for e in events {
        part.process(e.clone(), &mut emit);
    }
    part.finish(&mut emit);
    emit
}

#[test]
fn many_keys_through_a_small_cache_give_the_outputs_of_memory() {
    let plan = payments_plan(&[root().join("patterns")]);
    assert!(plan.patterns.len() >= 4, "the payment patterns");
    // 6,000 accounts, so that most hold a partial match or buffered events at a time.
    let events = events(&plan, &payments(24_000, 6_000, 7, 1_700_000_000_000, "P"));
    let want = straight(&plan, &events);
    assert!(want.iter().filter(|e| matches!(e, Emit::Alert { .. })).count() > 100, "the run raises alerts");

    const CACHE: usize = 400;
    const COMMIT_EVERY: usize = 50;
    let mut committed = Committed::new();
    let mut part = committed.reopen(&plan);
    let mut got = Vec::new();
    let (mut most_keys, mut most_cached) = (0, 0);
    let mut i = 0;
    let mut since_commit: Vec<Emit> = Vec::new();
    let mut at_commit = 0;
    let mut rewound = std::collections::HashSet::new();
    while i < events.len() {
        part.process(events[i].clone(), &mut since_commit);
        i += 1;
        part.next_offset = i as i64;
        if i % COMMIT_EVERY != 0 && i < events.len() {
            continue;
        }
        // Every 7th transaction aborts once: back to the last commit, and its events again.
        if (i / COMMIT_EVERY) % 7 == 3 && rewound.insert(i) {
            part = committed.reopen(&plan);
            assert_eq!(part.next_offset, at_commit as i64);
            since_commit.clear();
            i = at_commit;
            continue;
        }
        assert!(part.take_store_error().is_none());
        committed.commit(&mut part);
        got.append(&mut since_commit);
        at_commit = i;
        part.evict(CACHE);
        most_cached = most_cached.max(part.cached_keys());
        most_keys = most_keys.max(part.operators().iter().map(|o| o.active_keys()).sum::<usize>());
        // Now and then another instance takes the partition over from the changelog.
        if (i / COMMIT_EVERY) % 97 == 0 {
            part = committed.restore_elsewhere(&plan);
        }
    }
    part.finish(&mut since_commit);
    got.append(&mut since_commit);
    assert!(part.take_store_error().is_none());
    assert!(rewound.len() > 10, "{} rewinds", rewound.len());
    assert!(most_keys >= 4 * CACHE, "the state ({most_keys} keys) is at least 4x the cache ({CACHE})");
    assert!(most_cached <= CACHE, "{most_cached} keys in memory after a commit");
    let reads: u64 = part.operators().iter().map(|o| o.stats().state_misses).sum();
    assert!(reads > 0, "keys were read back from the store");
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want, "the outputs of a partition that keeps every key in memory");
}

/// `a followed by b+ allow combinations followed by c within 1h`: every card payment (b) after
/// a credit (a) doubles the key's partial matches.
fn combos_plan(dir: &Path) -> Arc<StreamPlan> {
    let file = dir.join("combos.tl");
    std::fs::write(
        &file,
        r#"pattern combos
  "A credit, any subset of the card payments after it, then a cash withdrawal"
  version 1
  severity low
  from payments
  key account_id
  match a followed by b+ allow combinations followed by c within 1h
  where
    a: direction == "IN" and channel == "TRANSFER"
    b: channel == "CARD"
    c: channel == "ATM_WITHDRAWAL"
  message "{account_id}"
  emit { account_id }
"#,
    )
    .expect("written");
    payments_plan(&[file])
}

/// One account's credit, `cards` card payments and (`withdrawal`) a cash withdrawal, 10 s apart
/// (the stream's out-of-orderness is 5 s), then another account's payment that moves the
/// watermark past them.
fn combo_events(plan: &StreamPlan, cards: i64, withdrawal: bool) -> Vec<Event> {
    let t0 = 1_700_000_000_000i64;
    let payment = |i: i64, account: &str, channel: &str, direction: &str| {
        format!(
            r#"{{"stream":"payments","value":{{"payment_id":"X-{i}","account_id":"{account}","customer_id":"C-1","counterparty_account_id":"CP-1","counterparty_name":null,"counterparty_country":"DE","direction":"{direction}","amount":100.0,"currency":"EUR","channel":"{channel}","country":"DE","branch_id":null,"reference":null,"event_time":{}}}}}"#,
            t0 + i * 10_000
        )
    };
    let mut lines = vec![payment(0, "ACC-1", "TRANSFER", "IN")];
    lines.extend((1..=cards).map(|i| payment(i, "ACC-1", "CARD", "OUT")));
    if withdrawal {
        lines.push(payment(cards + 1, "ACC-1", "ATM_WITHDRAWAL", "OUT"));
    }
    lines.push(payment(cards + 2, "ACC-2", "CASH_DEPOSIT", "IN"));
    events(plan, &lines.join("\n"))
}

/// Feeds `events` committing after each and dropping every key from memory; the outputs, the
/// most partial matches held, and the biggest record written.
fn through_the_store(
    plan: &Arc<StreamPlan>,
    committed: &mut Committed,
    events: &[Event],
    restore_at: usize,
) -> (Vec<Emit>, usize, usize) {
    let mut part = committed.reopen(plan);
    let mut got = Vec::new();
    let (mut most_partials, mut biggest) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        part.process(e.clone(), &mut got);
        part.next_offset = i as i64 + 1;
        let changes = committed.commit(&mut part);
        biggest = biggest.max(changes.records.iter().filter_map(|(_, v)| v.as_ref().map(Vec::len)).max().unwrap_or(0));
        most_partials = most_partials.max(part.operators()[0].active_partial_matches());
        part.evict(0);
        assert!(part.take_store_error().is_none());
        if i == restore_at {
            part = committed.restore_elsewhere(plan);
        }
    }
    (got, most_partials, biggest)
}

#[test]
fn one_key_with_100k_partial_matches_needs_no_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = combos_plan(dir.path());

    // Small enough to compare with every key in memory, matches included: the same outputs.
    let events = combo_events(&plan, 10, true);
    let want = straight(&plan, &events);
    let mut committed = Committed::new();
    let (mut got, _, _) = through_the_store(&plan, &mut committed, &events, 6);
    committed.reopen(&plan).finish(&mut got);
    assert!(want.len() >= 500, "{} outputs", want.len());
    assert_eq!(got, want, "the outputs of the partition that kept the key in memory");

    // 18 card payments: about 200,000 partial matches of one key, no budget. Its state is
    // written in parts at every commit, read back at every event, and restored elsewhere.
    let events = combo_events(&plan, 18, false);
    let mut committed = Committed::new();
    let (_, most_partials, biggest) = through_the_store(&plan, &mut committed, &events, events.len() - 1);
    assert!(most_partials >= 100_000, "{most_partials} partial matches");
    let stored: usize = committed.changelog.values().map(Vec::len).sum();
    assert!(stored > 1 << 20, "the key's state ({stored} bytes) is over a Kafka record's 1 MB");
    assert!(biggest <= tripline_service::core::changelog::CHUNK, "every record within a chunk: {biggest}");
    let part = committed.reopen(&plan);
    assert_eq!(part.operators()[0].active_partial_matches(), most_partials, "restored from the changelog");
    assert_eq!(part.operators()[0].active_keys(), 2, "the account, and the other one's buffered payment");
}

/// Changelog records of a key holding many events are incremental: each event's values are
/// written once, in a payload record of their own, and not again at each later commit.
#[test]
fn a_big_key_writes_each_event_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("held.tl");
    std::fs::write(
        &file,
        r#"pattern held
  "Card payments, then a cash withdrawal within the hour"
  version 1
  severity low
  from payments
  key account_id
  match a followed by c within 1h
  where
    a: channel == "CARD"
    c: channel == "ATM_WITHDRAWAL"
  message "{account_id}"
  emit { account_id }
"#,
    )
    .expect("written");
    let plan = payments_plan(&[file]);
    // 300 card payments of one account, 10 s apart: every one is held (a partial match each);
    // then the withdrawal that completes them and another account's payment.
    let events = combo_events(&plan, 300, true);
    let (held, rest) = events.split_at(events.len() - 2);
    let mut committed = Committed::new();
    let mut part = committed.reopen(&plan);
    let mut out = Vec::new();
    let at = tripline_service::core::changelog::state_prefix(&plan.topic, 0).len() + 1 + 16;
    let mut payload_writes: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let (mut payload_bytes, mut head_bytes, mut event_bytes, mut last_commit) = (0, 0, 0, 0);
    for (i, e) in held.iter().enumerate() {
        part.process(e.clone(), &mut out);
        part.next_offset = i as i64 + 1;
        let changes = committed.commit(&mut part);
        last_commit = changes.records.iter().filter_map(|(k, v)| Some(k.len() + v.as_ref()?.len())).sum::<usize>();
        // `<prefix>K<hash>S<key length:u32><key><sub-key>`: P a payload, E a buffer event.
        for (k, v) in &changes.records {
            match (k.get(at), k.get(at + 5 + "\u{2}ACC-1".len()), v) {
                (Some(b'S'), Some(b'P'), Some(v)) => {
                    *payload_writes.entry(k.clone()).or_default() += 1;
                    payload_bytes += v.len();
                }
                (Some(b'S'), _, Some(v)) => event_bytes += v.len(),
                (Some(_), _, Some(v)) => head_bytes = v.len(),
                _ => {}
            }
        }
        if i % 50 == 25 {
            part.evict(0);
        }
        assert!(part.take_store_error().is_none());
    }
    assert!(payload_writes.len() >= 290, "{} payload records", payload_writes.len());
    assert!(payload_writes.values().all(|&n| n == 1), "every payload record is written once");
    let mut whole = Vec::new();
    assert!(part.operators()[0].snapshot_key(&engine::runtime::Key::Str("ACC-1".into()), &mut whole));
    // The key's whole state is about 17 KB; its last commit wrote the head (its partial
    // matches, about 6 KB) and the records of one event.
    assert!(
        last_commit * 2 < whole.len(),
        "a commit writes what changed: {last_commit} bytes, the whole state {} (head {head_bytes}, over the run \
         payloads {payload_bytes}, events {event_bytes})",
        whole.len()
    );
    let partials = part.operators()[0].active_partial_matches();
    assert!(partials >= 290, "{partials} partial matches");
    // Restored elsewhere from the changelog, the key runs on as the one in memory.
    let mut restored = committed.restore_elsewhere(&plan);
    assert_eq!(restored.operators()[0].active_partial_matches(), partials);
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for e in rest {
        part.process(e.clone(), &mut want);
        restored.process(e.clone(), &mut got);
    }
    part.finish(&mut want);
    restored.finish(&mut got);
    assert!(want.len() >= 290, "the withdrawal completes the held partial matches: {}", want.len());
    assert_eq!(got, want);
}
