//! Audit replays against a real broker and registry (the project's `scripts/dev-up`): the
//! service runs over two batches of payments and records its pattern set; then
//!
//! - `tripline replay --pattern-set HASH` over the topic gives the bytes the service committed
//!   (live and shadow alerts), and the report's digest is theirs; a second replay gives the same
//!   alerts and the same report, byte for byte;
//! - `--from` a time between the batches reads exactly the second batch (offsets_for_times);
//! - `--compare` with a changed `structuring` lists exactly the alerts that change;
//! - `tripline explain` names the matched records of a committed alert and the steps they took,
//!   and traces its key;
//! - after a reload activates a changed pattern, replaying the recorded new set (from where it
//!   took effect, with the watermark it had then) gives exactly the changed pattern's alerts,
//!   and `--as-recorded` (every recorded set, switched where the service switched it) gives
//!   everything the service committed before and after the reload;
//! - bad ranges, an unknown topic and an unreachable broker each end with one clear error.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{payments, payments_from, write_config, DevEnv, Service, PAYMENT_PATTERNS, START};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn sorted(lines: &[String]) -> Vec<String> {
    let mut v = lines.to_vec();
    v.sort();
    v
}

/// The report's digest rule, computed here independently.
fn digest(lines: &[String]) -> String {
    let mut h = Sha256::new();
    for l in sorted(lines) {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    format!("sha256:{}", h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The match of an alert, as the comparison identifies it.
fn identity(a: &Value) -> String {
    serde_json::json!({"pattern": a["pattern"], "key": a["key"], "partition": a["partition"], "match": a["match"]})
        .to_string()
}

fn run(env: &DevEnv, args: &[&str]) -> Output {
    env.tripline().args(args).output().expect("tripline runs")
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).expect("output").lines().map(str::to_owned).collect()
}

/// A command that must fail: exit status 2, one line on stderr that says `what`, in time.
fn fails(env: &DevEnv, args: &[&str], what: &str) {
    let started = Instant::now();
    let out = run(env, args);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(lines.len(), 1, "{args:?}: one message, got:\n{stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(what), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(took < Duration::from_secs(30), "{args:?} took {took:?}");
}

#[test]
fn replays_reproduce_the_service_compare_versions_and_explain_alerts() {
    let env = DevEnv::start();
    let dir = env.dir.path();
    let cfg = write_config(dir, "audit", "a", "200ms", "");
    let c = cfg.display().to_string();

    // Two batches, with a record-time boundary between them.
    std::fs::write(dir.join("one.jsonl"), payments(3000, 40, 11)).expect("batch one");
    std::fs::write(dir.join("two.jsonl"), payments_from(2000, 40, 12, START + 3000 * 50 + 10_000, "Q"))
        .expect("batch two");
    env.run_ok(&["produce", "--config", &c, "--input", "one.jsonl", "--partitions", "3"]);
    std::thread::sleep(Duration::from_millis(100));
    let boundary = now_ms();
    std::thread::sleep(Duration::from_millis(100));
    env.run_ok(&["produce", "--config", &c, "--input", "two.jsonl"]);

    let mut service = Service::start(&env, &cfg, "audit");
    env.wait_caught_up("audit", "payments", Duration::from_secs(180));
    let mut committed = env.committed(&cfg, "audit.alerts");
    committed.extend(env.committed(&cfg, "tripline.alerts.shadow"));
    let status = service.stop();
    assert!(status.success(), "{status}: {}", common::log_tail(&env, "audit"));
    assert!(committed.len() > 20, "the batches alert: {}", committed.len());

    // The service recorded its set when the partitions were assigned: at offset 0, no watermark.
    let activations: Vec<Value> = env.committed(&cfg, "tripline.pattern-sets").iter().map(|l| json(l)).collect();
    assert!(!activations.is_empty());
    let set = activations[0]["set"].as_str().expect("set hash").to_owned();
    let positions: Vec<(i64, i64)> = activations
        .iter()
        .flat_map(|a| a["positions"].as_array().cloned().unwrap_or_default())
        .map(|p| (p["partition"].as_i64().unwrap_or(-1), p["offset"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(positions.iter().map(|p| p.0).collect::<BTreeSet<_>>(), BTreeSet::from([0, 1, 2]));
    assert!(positions.iter().all(|p| p.1 == 0), "{positions:?}");
    let names: BTreeSet<&str> =
        activations[0]["patterns"].as_array().expect("patterns").iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, PAYMENT_PATTERNS.into_iter().collect());

    // Replay the topic with the recorded set: the service's bytes, twice the same report.
    let replay =
        ["replay", "--config", &c, "--pattern-set", &set, "--output", "replay.jsonl", "--report", "report.json"];
    let out = run(&env, &replay);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let first = lines_of(&dir.join("replay.jsonl"));
    let report1 = std::fs::read_to_string(dir.join("report.json")).expect("report");
    assert_eq!(sorted(&first), sorted(&committed), "replay = what the service committed, byte for byte");
    let report: Value = json(&report1);
    assert_eq!(report["alerts"]["digest"], digest(&committed));
    assert_eq!(report["alerts"]["total"], committed.len());
    assert_eq!(report["events"]["read"], 5000);
    assert_eq!(report["events"]["dead_lettered"], 0);
    assert_eq!(report["patterns"]["set"], set);
    let parts = report["input"]["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 3);
    let end: BTreeMap<i64, i64> =
        parts.iter().map(|p| (p["partition"].as_i64().unwrap_or(-1), p["end_offset"].as_i64().unwrap_or(-1))).collect();
    assert_eq!(end.values().sum::<i64>(), 5000);
    for p in parts {
        assert_eq!(p["start_offset"], 0);
        assert_eq!(p["records"], p["end_offset"]);
        assert!(p["first_timestamp"].is_string() && p["max_event_time"].is_string(), "{p}");
    }
    let out = run(&env, &replay);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(lines_of(&dir.join("replay.jsonl")), first, "a second replay writes the same bytes");
    assert_eq!(std::fs::read_to_string(dir.join("report.json")).expect("report"), report1, "and the same report");
    let out = run(&env, &["replay", "--config", &c, "--output", "md.jsonl", "--report", "report.md"]);
    assert_eq!(out.status.code(), Some(0));
    let md = std::fs::read_to_string(dir.join("report.md")).expect("markdown report");
    assert!(
        md.contains(&digest(&committed)) && md.contains("| payments | 0 | 0..") && md.contains("## Alerts"),
        "{md}"
    );

    // From the boundary: exactly the second batch, found by record time.
    let from = boundary.to_string();
    let out =
        run(&env, &["replay", "--config", &c, "--from", &from, "--output", "late.jsonl", "--report", "late.json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let late: Value = json(&std::fs::read_to_string(dir.join("late.json")).expect("report"));
    assert_eq!(late["events"]["read"], 2000);
    for p in late["input"]["partitions"].as_array().expect("partitions") {
        let ends = end[&p["partition"].as_i64().expect("partition")];
        assert_eq!(p["end_offset"], ends);
        assert!(p["start_offset"].as_i64().expect("start") > 0, "{p}");
    }

    // A changed structuring (band 8,500..10,000) against the recorded set.
    let b_files = common::with_changed_structuring(dir);
    let changed = dir.join("structuring.tl");
    let mut args: Vec<&str> = vec!["replay", "--config", &c, "--pattern-set", &set, "--output", "a.jsonl"];
    for f in &b_files {
        args.extend(["--compare", f.as_str()]);
    }
    args.extend(["--diff", "diff.jsonl", "--report", "compare.md"]);
    let out = run(&env, &args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let mut args: Vec<&str> = vec!["replay", "--config", &c, "--output", "b.jsonl"];
    for f in &b_files {
        args.extend(["--patterns", f.as_str()]);
    }
    assert_eq!(run(&env, &args).status.code(), Some(0));
    let ids = |lines: &[String]| lines.iter().map(|l| identity(&json(l))).collect::<BTreeSet<_>>();
    let (a, b) = (ids(&lines_of(&dir.join("a.jsonl"))), ids(&lines_of(&dir.join("b.jsonl"))));
    let diff: Vec<Value> = lines_of(&dir.join("diff.jsonl")).iter().map(|l| json(l)).collect();
    let side = |s: &str| -> BTreeSet<String> {
        diff.iter()
            .filter(|d| d["in"] == s)
            .map(|d| {
                serde_json::json!({"pattern": d["pattern"], "key": d["key"], "partition": d["partition"], "match": d["match"]})
                    .to_string()
            })
            .collect()
    };
    assert_eq!(side("a"), a.difference(&b).cloned().collect(), "only in A: exactly the alerts B lost");
    assert_eq!(side("b"), b.difference(&a).cloned().collect(), "only in B: exactly the alerts B gained");
    assert_eq!(side("both"), a.intersection(&b).cloned().collect());
    assert!(!side("a").is_empty(), "a higher threshold loses alerts");
    for d in diff.iter().filter(|d| d["in"] != "both" || d["changed"] == true) {
        assert_eq!(d["pattern"], "structuring", "only structuring changed: {d}");
    }
    let compare = std::fs::read_to_string(dir.join("compare.md")).expect("comparison report");
    assert!(compare.contains("## Comparison") && compare.contains("| structuring |"), "{compare}");

    // Explain a committed structuring alert: its records, by coordinates, each step holding.
    let alert = committed.iter().map(|l| json(l)).find(|a| a["pattern"] == "structuring").expect("a structuring alert");
    let id = alert["alert_id"].as_str().expect("id");
    let out = run(&env, &["explain", "--config", &c, "--alert", id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let partition = alert["partition"].as_i64().expect("partition");
    let offsets: Vec<i64> =
        alert["match"]["deposit"].as_array().expect("deposits").iter().filter_map(Value::as_i64).collect();
    assert!(offsets.len() >= 3);
    for o in &offsets {
        assert!(
            text.contains(&format!("source:   payments/{partition}@{o}\n")),
            "names payments/{partition}@{o}:\n{text}"
        );
    }
    assert_eq!(text.matches("holds:    true").count(), offsets.len(), "{text}");
    assert!(text.contains(&format!("Alert {id}")) && text.contains("step 1/1 deposit"), "{text}");
    // Its key, traced over the topic: the alert is among the key's.
    let key = alert["key"].as_str().expect("key");
    let out = run(&env, &["explain", "--config", &c, "--key", key, "--pattern", "structuring", "--pattern-set", &set]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(id), "the trace lists the alert:\n{text}");

    // A reload activates a changed structuring (threshold 8,500) on the running service; a third
    // batch runs under it. Replaying the recorded new set starts where it took effect, with the
    // watermark it had then, and gives exactly the alerts the changed pattern committed.
    let live_copy = dir.join("live_structuring.tl");
    let library = common::root().join("patterns/structuring.tl").display().to_string();
    std::fs::copy(&library, &live_copy).expect("a copy of structuring");
    let cfg2 = dir.join("reload.toml");
    let config_text = std::fs::read_to_string(&cfg).expect("config");
    assert!(config_text.contains(&format!("{library:?}")));
    std::fs::write(
        &cfg2,
        config_text.replace(&format!("{library:?}"), &format!("{:?}", live_copy.display().to_string())),
    )
    .expect("config");
    let mut service = Service::start(&env, &cfg2, "reload");
    common::wait_ready(&cfg2, Duration::from_secs(60));
    std::fs::write(&live_copy, std::fs::read_to_string(&changed).expect("changed")).expect("edit");
    let hup = std::process::Command::new("kill").arg("-HUP").arg(service.child.id().to_string()).status();
    assert!(hup.expect("kill").success());
    let started = Instant::now();
    while !common::log_tail(&env, "reload").contains("pattern set activated") {
        assert!(started.elapsed() < Duration::from_secs(30), "no reload:\n{}", common::log_tail(&env, "reload"));
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(dir.join("three.jsonl"), payments_from(2000, 40, 13, START + 5000 * 50 + 20_000, "R"))
        .expect("batch three");
    env.run_ok(&["produce", "--config", &c, "--input", "three.jsonl"]);
    env.wait_caught_up("audit", "payments", Duration::from_secs(180));
    let mut after = env.committed(&cfg, "audit.alerts");
    after.extend(env.committed(&cfg, "tripline.alerts.shadow"));
    let status = service.stop();
    assert!(status.success(), "{status}: {}", common::log_tail(&env, "reload"));
    let sets: Vec<Value> = env.committed(&cfg, "tripline.pattern-sets").iter().map(|l| json(l)).collect();
    let reload = sets.iter().rev().find(|a| a["reason"] == "reload").expect("the reload is recorded");
    let new_set = reload["set"].as_str().expect("set").to_owned();
    let new_hash = reload["patterns"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "structuring")
        .and_then(|p| p["hash"].as_str())
        .expect("structuring in the new set")
        .to_owned();
    let of_new = |lines: &[String]| -> Vec<String> {
        sorted(&lines.iter().filter(|l| json(l)["hash"] == new_hash.as_str()).cloned().collect::<Vec<_>>())
    };
    let out = run(&env, &["replay", "--config", &c, "--pattern-set", &new_set, "--output", "pinned.jsonl"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let committed_new = of_new(&after);
    assert!(!committed_new.is_empty(), "the changed structuring alerted on the third batch");
    assert_eq!(of_new(&lines_of(&dir.join("pinned.jsonl"))), committed_new, "the pinned set reproduces what ran");
    // The same patterns from files, run from the beginning, raise more (what the change would
    // have raised on the first two batches too): where the set took effect matters.
    let mut args: Vec<&str> = vec!["replay", "--config", &c, "--output", "whole.jsonl"];
    for f in &b_files {
        args.extend(["--patterns", f.as_str()]);
    }
    assert_eq!(run(&env, &args).status.code(), Some(0));
    let whole = of_new(&lines_of(&dir.join("whole.jsonl")));
    assert!(whole.len() > committed_new.len(), "{} vs {}", whole.len(), committed_new.len());
    // Every recorded set, switched where the service switched it: all the service committed,
    // before and after the reload, byte for byte.
    let out = run(&env, &["replay", "--config", &c, "--as-recorded", "--output", "as-ran.jsonl"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    assert_eq!(sorted(&lines_of(&dir.join("as-ran.jsonl"))), sorted(&after), "replay across the reload = the service");

    // Bad arguments: one clear message each, exit 2, no hang.
    fails(&env, &["replay", "--config", &c, "--from", "2100-01-01", "--output", "x.jsonl"], "no records to replay");
    fails(
        &env,
        &["replay", "--config", &c, "--from", "2026-03-02T00:00:00Z", "--to", "2026-03-01", "--output", "x.jsonl"],
        "is not after",
    );
    fails(
        &env,
        &["replay", "--config", &c, "--topic", "nope", "--output", "x.jsonl"],
        "no pattern here reads topic `nope`",
    );
    let missing = dir.join("missing.toml");
    let text =
        std::fs::read_to_string(&cfg).expect("config").replace("topic = \"payments\"", "topic = \"no-such-topic\"");
    std::fs::write(&missing, text).expect("config");
    fails(
        &env,
        &["replay", "--config", &missing.display().to_string(), "--output", "x.jsonl"],
        "no topic `no-such-topic`",
    );
    fails(
        &env,
        &["replay", "--config", &c, "--pattern-set", "0123456789abcdef", "--output", "x.jsonl"],
        "no pattern set",
    );
    fails(&env, &["explain", "--config", &c, "--alert", "0123456789abcdef0123456789abcdef"], "no alert");
    let started = Instant::now();
    let out = env
        .tripline()
        .env("TRIPLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
        .args(["replay", "--config", &c, "--output", "x.jsonl"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| !l.trim().is_empty()).count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: cannot reach the Kafka brokers at 127.0.0.1:1"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
}
