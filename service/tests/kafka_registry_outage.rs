//! A schema registry that does not answer is not a reason to dead-letter: records whose writer
//! schema the service has not seen yet wait (the service retries) until the registry is back,
//! then are processed. Nothing lands in the dead-letter topic. And no transaction stays open
//! while the service waits: what it did before the record that needs the registry is committed
//! first, so readers of the outputs (read_committed) are not held up by the outage.
#![allow(clippy::print_stderr)]

mod common;

use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use common::{log_tail, write_config, DevEnv, Service};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use schema_registry_converter::blocking::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

#[test]
fn records_wait_for_the_registry_instead_of_being_dead_lettered() {
    let env = DevEnv::start();
    if !env.can_restart_broker() {
        eprintln!("an external registry cannot be stopped by the test: skipped");
        return;
    }
    let dir = env.dir.path().to_owned();
    // A long commit interval: the records before the outage's first unknown schema would sit in
    // an open transaction for most of a second if the service did not commit them before waiting.
    let cfg = write_config(&dir, "outage", "a", "1s", "");
    std::fs::write(dir.join("good.jsonl"), common::payments(2_000, 100, 21)).expect("written");
    env.run_ok(&["produce", "--config", &cfg.display().to_string(), "--input", "good.jsonl", "--partitions", "2"]);
    let mut svc = Service::start(&env, &cfg, "outage");
    env.wait_caught_up("outage", "payments", Duration::from_secs(120));

    // A second, compatible version of the payments schema (one more optional field), which the
    // service has not fetched yet.
    let json = std::fs::read_to_string(common::root().join("testdata/schemas/payments.avsc")).expect("schema");
    let mut v2: serde_json::Value = serde_json::from_str(&json).expect("json");
    v2["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "note", "type": ["null", "string"], "default": null}));
    let v2_json = v2.to_string();
    let sr = SrSettings::new(env.registry.clone());
    let id =
        post_schema(&sr, "payments-value".to_owned(), SuppliedSchema::new(None, SchemaType::Avro, v2_json.clone()))
            .expect("registered")
            .id;
    let schema = Schema::parse_str(&v2_json).expect("parses");

    // The id of the schema the service knows already (it decoded the first records with it).
    let v1_id =
        post_schema(&sr, "payments-value".to_owned(), SuppliedSchema::new(None, SchemaType::Avro, json.clone()));
    let v1_id = v1_id.expect("the known schema's id").id;
    let v1 = Schema::parse_str(&json).expect("parses");

    // The registry goes away: killed, and no longer accepting connections (under load it may
    // take a while to stop answering).
    let pid = std::fs::read_to_string(dir.join("infra/registry.pid")).expect("registry pid");
    assert!(std::process::Command::new("kill").arg(pid.trim()).status().expect("kill").success());
    let addr = env.registry.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let gone = std::time::Instant::now();
    while std::net::TcpStream::connect(&addr).is_ok() {
        assert!(gone.elapsed() < Duration::from_secs(30), "the registry at {addr} still answers");
        std::thread::sleep(Duration::from_millis(50));
    }

    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &env.bootstrap).create().expect("producer");
    // First records of the known schema (decoded from the cache), then the unknown one, all in
    // one partition.
    let known = 50;
    for i in 0..known {
        let ts = common::START + 150_000 + i * 10;
        let bytes = common::framed(v1_id, &v1, Avro::Record(common::payment_fields(&format!("V1-{i}"), ts)));
        producer.send(BaseRecord::<str, [u8]>::to("payments").key("ACC-1").payload(&bytes)).expect("queued");
    }
    let n = 20;
    for i in 0..n {
        let ts = common::START + 200_000 + i * 10;
        let mut fields = common::payment_fields(&format!("V2-{i}"), ts);
        fields.push(("note".to_owned(), Avro::Union(1, Box::new(Avro::String("v2".into())))));
        let bytes = common::framed(id, &schema, Avro::Record(fields));
        producer.send(BaseRecord::<str, [u8]>::to("payments").key("ACC-1").payload(&bytes)).expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");

    // While the registry is down the service waits: not caught up, nothing dead-lettered.
    std::thread::sleep(Duration::from_secs(4));
    assert!(svc.exited().is_none(), "the service gave up:\n{}", log_tail(&env, "outage"));
    assert!(!env.caught_up("outage", "payments"), "records of an unknown writer schema were committed");
    let log = std::fs::read_to_string(dir.join("outage.log")).expect("log");
    assert!(log.contains("the schema registry did not answer"), "{}", log_tail(&env, "outage"));
    assert!(log.contains("committing what is done before waiting"), "{}", log_tail(&env, "outage"));
    // Everything before the first record of the unknown schema is committed, and no transaction
    // holds the outputs' readers.
    assert_eq!(common::committed_total(&env, "outage", "payments"), 2_000 + known, "{}", log_tail(&env, "outage"));
    for topic in ["outage.alerts", "outage.changelog"] {
        let held = common::held_by_open_transactions(&env, topic);
        assert!(held.is_empty(), "read_committed readers are held up by an open transaction: {held:?}");
    }

    // The registry comes back (same port, same data): the records are processed.
    let out = std::process::Command::new(common::root().join("scripts/dev-up"))
        .arg("--data-dir")
        .arg(dir.join("infra"))
        .output()
        .expect("dev-up");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    env.wait_caught_up("outage", "payments", Duration::from_secs(120));
    assert!(svc.stop().success(), "{}", log_tail(&env, "outage"));
    let log = std::fs::read_to_string(dir.join("outage.log")).expect("log");
    let stopped = log.lines().rev().find(|l| l.contains("stopped")).expect("a final report");
    let all = 2_000 + known + n;
    assert!(stopped.contains(&format!("consumed={all} processed={all} ")), "{stopped}");
    assert!(stopped.contains("dead_lettered=0"), "{stopped}");
}
