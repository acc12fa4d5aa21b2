//! Quiet partitions against a real broker and registry (the project's `scripts/dev-up`): with
//! `advance_when_idle`, a partition that had no record for `idle_timeout` and has nothing left
//! to read moves its watermark by the wall clock, so a trailing `not followed by ... within 10m`
//! closes without another event; the advance is recorded in the context topic, so a replay of the
//! topics gives the service's bytes (and an event the advance made late is late in the replay
//! too). The same service without the option raises nothing.

#![allow(clippy::print_stderr)] // the figures are the output

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{free_port, log_tail, root, DevEnv, Service};
use serde_json::{json, Value};

const IDLE_TIMEOUT_MS: u64 = 2_000;
const COMMIT_INTERVAL_MS: u64 = 100;

/// A service config for the account events on `topic`, with the test pattern
/// `unconfirmed_withdrawal` (a trailing `not followed by ... within 10m`).
fn config(dir: &Path, group: &str, topic: &str, advance: bool) -> PathBuf {
    let text = format!(
        r#"[streams.account_events]
topic = "{topic}"
schema = {schema:?}
timestamp_field = "event_time"
max_out_of_orderness = "5s"
key = "account_id"
idle_timeout = "{IDLE_TIMEOUT_MS}ms"
advance_when_idle = {advance}

[kafka]
group_id = "{group}"

[outputs]
alerts_topic = "{group}.alerts"
shadow_alerts_topic = "{group}.alerts.shadow"
late_topic = "{group}.late"
dead_letter_topic = "{group}.dead-letter"

[service]
patterns = [{pattern:?}]
state_dir = "state-{group}"
instance_id = "a"
commit_interval = "{COMMIT_INTERVAL_MS}ms"
http_addr = "127.0.0.1:{port}"
"#,
        schema = root().join("testdata/schemas/account_events.avsc").display().to_string(),
        pattern = root().join("testdata/patterns/unconfirmed_withdrawal.tl").display().to_string(),
        port = free_port(),
    );
    let path = dir.join(format!("{group}.toml"));
    std::fs::write(&path, text).expect("config written");
    path
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as i64
}

fn withdrawal(id: &str, account: &str, ts: i64, amount: f64) -> Value {
    json!({"stream": "account_events", "type": "Withdrawal", "partition": 0, "value": {
        "event_id": id, "account_id": account, "event_time": ts, "event_type": "withdrawal",
        "amount": amount, "currency": "EUR", "destination": "ES9121000418450200051332"}})
}

fn mfa(id: &str, account: &str, ts: i64) -> Value {
    json!({"stream": "account_events", "type": "MfaVerification", "partition": 0, "value": {
        "event_id": id, "account_id": account, "event_time": ts, "event_type": "mfa_verification",
        "method": "push", "success": true}})
}

fn produce(env: &DevEnv, cfg: &Path, name: &str, events: &[Value]) {
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(env.dir.path().join(name), text).expect("events");
    let c = cfg.display().to_string();
    env.run_ok(&["produce", "--config", &c, "--input", name, "--partitions", "2"]);
}

/// The timestamps of `topic`'s committed records.
fn record_times(env: &DevEnv, topic: &str) -> Vec<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.bootstrap)
        .set("group.id", "idle-times")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let parts = md.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let (mut out, mut eof, start) = (Vec::new(), 0, Instant::now());
    while eof < parts && start.elapsed() < Duration::from_secs(30) {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.extend(m.timestamp().to_millis()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    out
}

/// Waits until `group` has committed `topic` to its end; the time it took.
fn caught_up(env: &DevEnv, group: &str, topic: &str, since: Instant) -> Duration {
    while !env.caught_up(group, topic) {
        assert!(since.elapsed() < Duration::from_secs(90), "{group} does not catch up: {}", log_tail(env, group));
        std::thread::sleep(Duration::from_millis(20));
    }
    since.elapsed()
}

#[test]
fn a_quiet_partition_closes_its_windows_by_the_wall_clock_and_replay_agrees() {
    let env = DevEnv::start();
    let dir = env.dir.path();
    let topic = "quiet_accounts";
    let advancing = config(dir, "idle", topic, true);
    let holding = config(dir, "still", topic, false);
    // Partition 0: a large withdrawal 20 minutes ago with no MFA after it (alerts once its
    // 10-minute window is past the watermark), and one confirmed by an MFA (no alert); then
    // nothing. Partition 1 never gets a record.
    // The topic is made by a first record: a login in partition 1 (it starts no match, so that
    // partition holds nothing to advance for).
    let login = json!({"stream": "account_events", "type": "Login", "partition": 1, "value": {
        "event_id": "L-1", "account_id": "ACC-9", "event_time": now_ms() - 30 * 60_000, "event_type": "login",
        "ip_address": "192.0.2.1", "country": "DE", "device_id": "D-1", "latitude": 52.5, "longitude": 13.4,
        "success": true}});
    produce(&env, &advancing, "login.jsonl", &[login]);
    let started = Instant::now();
    let mut a = Service::start(&env, &advancing, "idle");
    let mut b = Service::start(&env, &holding, "still");
    common::wait_ready(&advancing, Duration::from_secs(60));
    common::wait_ready(&holding, Duration::from_secs(60));
    caught_up(&env, "idle", topic, started);
    let t = now_ms();
    produce(
        &env,
        &advancing,
        "first.jsonl",
        &[
            withdrawal("W-1", "ACC-1", t - 20 * 60_000, 5_000.0),
            withdrawal("W-2", "ACC-2", t - 19 * 60_000, 2_000.0),
            mfa("M-2", "ACC-2", t - 18 * 60_000),
        ],
    );
    caught_up(&env, "idle", topic, started);
    let alerts = loop {
        let found = env.committed(&advancing, "idle.alerts");
        if !found.is_empty() {
            break found;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no alert: {}", log_tail(&env, "idle"));
        std::thread::sleep(Duration::from_millis(50));
    };
    // From the last input record's timestamp (when it was produced) to the alert's (when the
    // service produced it, in the transaction that then committed).
    let input = record_times(&env, topic).into_iter().max().expect("input records");
    let alert = record_times(&env, "idle.alerts").into_iter().max().expect("the alert");
    let after = Duration::from_millis((alert - input).max(0) as u64);
    eprintln!(
        "the alert was produced {after:?} after the last record (idle_timeout {IDLE_TIMEOUT_MS} ms, commit interval \
         {COMMIT_INTERVAL_MS} ms)"
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert: Value = serde_json::from_str(&alerts[0]).expect("JSON");
    assert_eq!(alert["key"], "ACC-1");
    assert_eq!(alert["fields"]["withdrawal_event_id"], "W-1");
    // The partition goes idle `idle_timeout` after the service read its last record (a fetch
    // after it was produced); the loop looks every 100 ms at most; the alert is produced when
    // the transaction commits. Measured about idle_timeout + 1 s on a 2-core machine; the bound
    // leaves room for a slower one.
    assert!(
        after < Duration::from_millis(IDLE_TIMEOUT_MS + COMMIT_INTERVAL_MS + 3_000),
        "the alert came {after:?} after the last record"
    );

    // Without the option the window stays open: the other group read the same records and has
    // raised nothing.
    caught_up(&env, "still", topic, started);
    std::thread::sleep(Duration::from_millis(IDLE_TIMEOUT_MS + 500));
    assert!(env.committed(&holding, "still.alerts").is_empty(), "no alert without advance_when_idle");

    // A withdrawal from 15 minutes ago is now behind the advanced watermark: late for the
    // advancing service (it goes to the late topic), on time for the other.
    let late_from = Instant::now();
    produce(&env, &advancing, "late.jsonl", &[withdrawal("W-3", "ACC-3", now_ms() - 15 * 60_000, 3_000.0)]);
    caught_up(&env, "idle", topic, late_from);
    caught_up(&env, "still", topic, late_from);
    let late = env.committed(&advancing, "idle.late");
    assert_eq!(late.len(), 1, "the withdrawal behind the advanced watermark is late");
    assert!(env.committed(&holding, "still.late").is_empty(), "and on time without the option");
    // Past another idle timeout: the advances go on while the partition is quiet.
    std::thread::sleep(Duration::from_millis(2 * IDLE_TIMEOUT_MS));
    assert!(a.stop().success(), "{}", log_tail(&env, "idle"));
    assert!(b.stop().success(), "{}", log_tail(&env, "still"));
    let committed = env.committed(&advancing, "idle.alerts");
    assert_eq!(committed, alerts, "nothing more after the late record");

    // The advances are in the context topic: partition 0's after its 3 records, and partition
    // 1's once (its login waited in the out-of-order buffer); none once nothing waits.
    let advances: Vec<Value> = common::records(&env, "idle.context")
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).expect("an advance"))
        .collect();
    assert!(!advances.is_empty(), "advances recorded");
    assert!(advances.iter().all(|a| a["topic"] == topic), "{advances:?}");
    assert!(advances.iter().all(|a| a["kind"] == "advance"), "{advances:?}");
    let at = |p: i64| advances.iter().filter(|a| a["partition"] == p).map(|a| a["before"].as_i64()).collect::<Vec<_>>();
    assert!(at(0).contains(&Some(3)), "an advance after partition 0's 3 records: {advances:?}");
    assert_eq!(at(1), vec![Some(1)], "partition 1 advanced once, for its buffered login: {advances:?}");
    eprintln!("{} advance(s) recorded", advances.len());

    // A replay of the topic with the recorded set gives the committed bytes: it applies the
    // advances where the service did, so W-1's window closes and W-3 is late.
    let sets = env.committed(&advancing, "tripline.pattern-sets");
    let set = sets.iter().rev().find(|l| l.contains("\"group\":\"idle\"")).expect("the group's set");
    let set: Value = serde_json::from_str(set).expect("JSON");
    let c = advancing.display().to_string();
    let out = env
        .tripline()
        .args([
            "replay",
            "--config",
            &c,
            "--pattern-set",
            set["set"].as_str().expect("hash"),
            "--output",
            "replay.jsonl",
        ])
        .output()
        .expect("replay runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let replayed: Vec<String> =
        std::fs::read_to_string(dir.join("replay.jsonl")).expect("replay").lines().map(str::to_owned).collect();
    assert_eq!(replayed, committed, "replay = what the service committed, byte for byte");
    assert!(stderr.contains("1 late"), "the replay finds W-3 late too: {stderr}");
}
