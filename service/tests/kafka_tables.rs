//! Reference tables read from a compacted topic, against a real broker and registry (the
//! project's `scripts/dev-up`): the library's `sanctioned_counterparty_transfer` with its list
//! `sanctioned_counterparties` in a topic. The service reads the topic before its first record,
//! follows it while running and installs a change between transactions (no pattern hash
//! changes, no state is reset); a transfer alerts against the list as it was when the service
//! read it. A replay of the topics gives the service's bytes from what the service recorded in
//! its context topic, even after the table topic changed again since.

#![allow(clippy::print_stderr)] // the figures are the output

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{free_port, log_tail, root, DevEnv, Service};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const LIST: &str = "screening.sanctions";
const LISTED: &str = "AE420260001015333439101";
const ADDED: &str = "CY11002001280000001200527611";

fn config(dir: &Path, group: &str) -> PathBuf {
    let text = format!(
        r#"[streams.payments]
topic = "payments"
schema = {schema:?}
timestamp_field = "event_time"
max_out_of_orderness = "5s"
key = "account_id"

[tables.sanctioned_counterparties]
kind = "list"
key = "string"
topic = "{LIST}"

[kafka]
group_id = "{group}"

[outputs]
alerts_topic = "{group}.alerts"
late_topic = "{group}.late"
dead_letter_topic = "{group}.dead-letter"

[service]
patterns = [{pattern:?}]
state_dir = "state-{group}"
instance_id = "a"
commit_interval = "100ms"
http_addr = "127.0.0.1:{port}"
"#,
        schema = root().join("testdata/schemas/payments.avsc").display().to_string(),
        pattern = root().join("patterns/sanctioned_counterparty_transfer.tl").display().to_string(),
        port = free_port(),
    );
    let path = dir.join(format!("{group}.toml"));
    std::fs::write(&path, text).expect("config written");
    path
}

fn transfer(id: &str, account: &str, counterparty: &str, ts: i64) -> Value {
    // One partition: the last payment of a batch moves its watermark past the others.
    json!({"stream": "payments", "type": "Payment", "partition": 0, "value": {
        "payment_id": id, "account_id": account, "customer_id": "CUS-1", "counterparty_account_id": counterparty,
        "counterparty_name": "SOME TRADING LLC", "counterparty_country": "AE", "direction": "OUT", "amount": 9100.0,
        "currency": "USD", "channel": "INTERNATIONAL_WIRE", "country": "DE", "branch_id": null,
        "reference": "PO 1", "event_time": ts}})
}

fn produce_payments(env: &DevEnv, cfg: &Path, name: &str, events: &[Value]) {
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(env.dir.path().join(name), text).expect("events");
    env.run_ok(&["produce", "--config", &cfg.display().to_string(), "--input", name, "--partitions", "2"]);
}

/// Writes list entries (`None`: a tombstone) to the table topic.
fn write_list(env: &DevEnv, entries: &[(&str, Option<&str>)]) {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &env.bootstrap).create().expect("producer");
    for (k, v) in entries {
        let mut r: BaseRecord<'_, str, str> = BaseRecord::to(LIST).key(*k);
        if let Some(v) = v {
            r = r.payload(*v);
        }
        p.send(r).map_err(|(e, _)| e).expect("sent");
    }
    p.flush(Duration::from_secs(10)).expect("flushed");
}

fn create_list_topic(env: &DevEnv) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &env.bootstrap).create().expect("admin");
    let topic = NewTopic::new(LIST, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let results = rt.block_on(admin.create_topics(&[topic], &AdminOptions::new())).expect("create topics");
    for r in results {
        r.expect("the table topic is created");
    }
}

/// The context topic's table versions (`tables` records).
fn versions(env: &DevEnv, group: &str) -> Vec<Value> {
    common::records(env, &format!("{group}.context"))
        .into_iter()
        .map(|(_, v)| serde_json::from_slice::<Value>(&v).expect("a context record"))
        .filter(|r| r["kind"] == "tables")
        .collect()
}

#[test]
fn a_table_topic_changes_while_running_and_replay_reads_it_as_the_service_did() {
    let env = DevEnv::start();
    let dir = env.dir.path();
    let cfg = config(dir, "tbl");
    create_list_topic(&env);
    write_list(&env, &[(LISTED, Some("true")), ("IR580540105180021273113007", Some("true"))]);

    // Before the change: a transfer to the listed account alerts, one to the other does not.
    // The last payment, an hour later, moves the watermark past them: they are matched before
    // the list changes.
    let t0 = 1_767_000_000_000_i64;
    produce_payments(
        &env,
        &cfg,
        "before.jsonl",
        &[
            transfer("P-1", "ACC-1", LISTED, t0),
            transfer("P-2", "ACC-2", ADDED, t0 + 60_000),
            transfer("P-3", "ACC-3", "DE02120300000000202051", t0 + 3_600_000),
        ],
    );
    let started = Instant::now();
    let mut svc = Service::start(&env, &cfg, "tbl");
    while !(common::http_status(&cfg, "/readyz") == Some(200) && env.caught_up("tbl", "payments")) {
        assert!(started.elapsed() < Duration::from_secs(90), "{}", log_tail(&env, "tbl"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = env.committed(&cfg, "tbl.alerts");
    assert_eq!(first.len(), 1, "{first:?}");
    let hash = serde_json::from_str::<Value>(&first[0]).expect("JSON")["hash"].clone();

    // The list changes while the service runs: one account added, the first one removed.
    write_list(&env, &[(ADDED, Some("true")), (LISTED, None)]);
    let changed = Instant::now();
    while versions(&env, "tbl").iter().all(|v| v["base"].is_null()) {
        assert!(changed.elapsed() < Duration::from_secs(30), "no new version: {}", log_tail(&env, "tbl"));
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("the change was recorded {:?} after it was written", changed.elapsed());

    // After it: the added account alerts, the removed one no longer does.
    produce_payments(
        &env,
        &cfg,
        "after.jsonl",
        &[
            transfer("P-4", "ACC-4", LISTED, t0 + 7_200_000),
            transfer("P-5", "ACC-5", ADDED, t0 + 7_260_000),
            transfer("P-6", "ACC-6", "DE02120300000000202051", t0 + 10_800_000),
        ],
    );
    let after = Instant::now();
    while !env.caught_up("tbl", "payments") {
        assert!(after.elapsed() < Duration::from_secs(60), "{}", log_tail(&env, "tbl"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(svc.stop().success(), "{}", log_tail(&env, "tbl"));
    let alerts = env.committed(&cfg, "tbl.alerts");
    let payments: Vec<String> = alerts
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("JSON")["fields"]["payment_id"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    let mut sorted = payments.clone();
    sorted.sort();
    assert_eq!(sorted, ["P-1", "P-5"], "each transfer against the list as it was then: {alerts:?}");
    for l in &alerts {
        assert_eq!(serde_json::from_str::<Value>(l).expect("JSON")["hash"], hash, "the pattern's hash is unchanged");
    }

    // The table topic changes again; a replay still reads the list as the service did.
    write_list(&env, &[(LISTED, Some("true")), (ADDED, None)]);
    let sets = env.committed(&cfg, "tripline.pattern-sets");
    let set = sets.iter().rev().find(|l| l.contains("\"group\":\"tbl\"")).expect("the group's set");
    let set: Value = serde_json::from_str(set).expect("JSON");
    let c = cfg.display().to_string();
    env.run_ok(&["replay", "--config", &c, "--pattern-set", set["set"].as_str().expect("hash"), "--output", "r.jsonl"]);
    let replayed: Vec<String> =
        std::fs::read_to_string(dir.join("r.jsonl")).expect("replay").lines().map(str::to_owned).collect();
    let (mut a, mut b) = (alerts.clone(), replayed);
    a.sort();
    b.sort();
    assert_eq!(a, b, "replay = what the service committed, byte for byte");
    assert!(versions(&env, "tbl").len() >= 2, "the first version whole, then the change");

    // Each alert is explained with the list as the service had it then (by now the topic says
    // the opposite of both).
    for (payment, counterparty) in [("P-1", LISTED), ("P-5", ADDED)] {
        let line = alerts.iter().find(|l| l.contains(&format!("\"{payment}\""))).expect("the alert");
        let id = serde_json::from_str::<Value>(line).expect("JSON")["alert_id"].as_str().expect("id").to_owned();
        let out = env.run_ok(&["explain", "--config", &c, "--alert", &id]);
        assert!(!out.contains("PROBLEM") && out.contains("holds:    true"), "{payment}: {out}");
        assert!(out.contains(counterparty), "{payment}: {out}");
    }
}
