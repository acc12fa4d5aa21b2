//! Bad input never stops the service and is never lost: undecodable bytes, an unknown schema
//! id, a schema of another stream, a writer schema without a required field, a truncated datum
//! and absurd timestamps each land in the dead-letter topic with their reason and source
//! coordinates; a late event lands in the late topic; the good events still alert as a replay
//! of them does; and consumed = processed + late + dead-lettered. The schema gate: a writer
//! schema without a field running patterns read shows in `tripline_schema_breaks` (one without
//! a field no pattern reads does not), and `tripline check --registry` fails once such a schema
//! is the subject's latest.

#![allow(clippy::print_stderr)] // the figures are the output

mod common;

use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use common::{assert_same, by_id, log_tail, records, write_config, DevEnv, Service};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use schema_registry_converter::blocking::schema_registry::{post_schema, SrSettings};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

fn register(env: &DevEnv, subject: &str, schema: &str) -> u32 {
    let sr = SrSettings::new(env.registry.clone());
    post_schema(&sr, subject.to_owned(), SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned()))
        .expect("schema registered")
        .id
}

/// (topic, partition, offset) -> headers, for every record of `topic`.
#[test]
fn bad_records_go_to_the_dead_letter_topic_with_their_reason() {
    let env = DevEnv::start();
    let dir = env.dir.path().to_owned();
    let cfg = write_config(&dir, "bad", "a", "50ms", "");
    // Good events first (registers the payments schema and creates the topic, 2 partitions).
    std::fs::write(dir.join("good.jsonl"), common::payments(3_000, 100, 5)).expect("written");
    env.run_ok(&["produce", "--config", &cfg.display().to_string(), "--input", "good.jsonl", "--partitions", "2"]);

    let root = common::root();
    let payments_json = std::fs::read_to_string(root.join("testdata/schemas/payments.avsc")).expect("schema");
    let payments = Schema::parse_str(&payments_json).expect("parses");
    let payments_id = register(&env, "payments-value", &payments_json);
    let cards_json = std::fs::read_to_string(root.join("testdata/schemas/card_auths.avsc")).expect("schema");
    let cards_id = register(&env, "cards-elsewhere-value", &cards_json);
    // A payments writer schema without `customer_id` (which the service's schema requires).
    let mut short: serde_json::Value = serde_json::from_str(&payments_json).expect("json");
    short["fields"].as_array_mut().expect("fields").retain(|f| f["name"] != "customer_id");
    let short_json = short.to_string();
    let short_schema = Schema::parse_str(&short_json).expect("parses");
    let short_id = register(&env, "payments-short-value", &short_json);
    // One without `counterparty_account_id`, which three of the patterns read.
    let mut nocp: serde_json::Value = serde_json::from_str(&payments_json).expect("json");
    nocp["fields"].as_array_mut().expect("fields").retain(|f| f["name"] != "counterparty_account_id");
    let nocp_json = nocp.to_string();
    let nocp_schema = Schema::parse_str(&nocp_json).expect("parses");
    let nocp_id = register(&env, "payments-nocp-value", &nocp_json);

    let payment_without = |ts: i64, field: &str| {
        let mut fields = common::payment_fields("BAD-1", ts);
        fields.retain(|(n, _)| n != field);
        Avro::Record(fields)
    };
    let payment = |ts: i64, drop_customer: bool| payment_without(ts, if drop_customer { "customer_id" } else { "-" });
    let now_ish = common::START + 3_000 * 50;
    let valid = common::framed(payments_id, &payments, payment(now_ish, false));
    let mut truncated = valid.clone();
    truncated.truncate(valid.len() - 6);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not-avro", b"this is not avro".to_vec()),
        ("unknown-schema", {
            let mut v = vec![0, 0, 0x0f, 0x42, 0x40];
            v.extend_from_slice(b"\x02\x04");
            v
        }),
        ("wrong-schema", {
            let mut v = vec![0];
            v.extend_from_slice(&cards_id.to_be_bytes());
            v.extend_from_slice(&[0; 40]);
            v
        }),
        ("missing-field", common::framed(short_id, &short_schema, payment(now_ish, true))),
        ("missing-field", common::framed(nocp_id, &nocp_schema, payment_without(now_ish, "counterparty_account_id"))),
        ("undecodable", truncated),
        ("bad-timestamp", common::framed(payments_id, &payments, payment(253_402_300_799_000, false))),
        ("bad-timestamp", common::framed(payments_id, &payments, payment(-5, false))),
    ];
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &env.bootstrap).create().expect("producer");
    for (_, bytes) in &bad {
        producer.send(BaseRecord::<str, [u8]>::to("payments").key("ACC-1").payload(bytes)).expect("queued");
    }
    // A late one: an hour behind everything else on its partition.
    let late = common::framed(payments_id, &payments, payment(now_ish - 3_600_000, false));
    producer.send(BaseRecord::<str, [u8]>::to("payments").key("ACC-1").payload(&late)).expect("queued");
    producer.flush(Duration::from_secs(10)).expect("flushed");
    // More good events after the bad ones: the service must keep going.
    std::fs::write(dir.join("good2.jsonl"), common::payments_from(3_000, 100, 6, common::START + 160_000, "Q"))
        .expect("written");
    env.run_ok(&["produce", "--config", &cfg.display().to_string(), "--input", "good2.jsonl"]);

    let mut svc = Service::start(&env, &cfg, "bad");
    common::wait_ready(&cfg, Duration::from_secs(60));
    assert_eq!(common::http_status(&cfg, "/healthz"), Some(200));
    assert_eq!(common::http_status(&cfg, "/nothing-here"), Some(404));
    env.wait_caught_up("bad", "payments", Duration::from_secs(300));
    // The schema gate: the writer schema without the counterparty breaks three patterns' reads;
    // the one without `customer_id` (which no pattern reads) breaks none.
    let metrics = common::http_get(&cfg, "/metrics").expect("metrics");
    let breaks = metrics.lines().find(|l| l.starts_with("tripline_schema_breaks{stream=\"payments\"}"));
    assert_eq!(breaks.and_then(|l| l.rsplit(' ').next()), Some("3"), "{metrics}");
    let log = std::fs::read_to_string(dir.join("bad.log")).expect("log");
    let gate: Vec<&str> = log.lines().filter(|l| l.contains("breaks running patterns")).collect();
    assert!(!gate.is_empty() && gate.iter().all(|l| l.contains(&format!("schema_id={nocp_id}"))), "{gate:?}");
    assert!(!log.contains(&format!("schema_id={short_id} ")), "a field no pattern reads");
    assert!(svc.stop().success(), "the service did not stop cleanly:\n{}", log_tail(&env, "bad"));

    let dead = records(&env, "bad.dead-letter");
    let mut reasons: Vec<&str> =
        dead.iter().map(|(h, _)| h.get("tripline.reason").map(String::as_str).unwrap_or("?")).collect();
    reasons.sort();
    let mut expected: Vec<&str> = bad.iter().map(|(r, _)| *r).collect();
    expected.sort();
    assert_eq!(reasons, expected, "dead letters: {dead:?}");
    for (h, payload) in &dead {
        assert_eq!(h.get("tripline.source.topic").map(String::as_str), Some("payments"), "{h:?}");
        assert!(h.contains_key("tripline.source.partition") && h.contains_key("tripline.source.offset"), "{h:?}");
        assert!(!h.get("tripline.error").map(String::is_empty).unwrap_or(true), "a reason message: {h:?}");
        assert!(bad.iter().any(|(_, b)| b == payload), "the original bytes are kept");
    }
    let late_records = records(&env, "bad.late");
    assert_eq!(late_records.len(), 1, "one late event: {late_records:?}");
    assert_eq!(late_records[0].1, late);

    // The counts add up, as the service reports them when it stops.
    let log = std::fs::read_to_string(dir.join("bad.log")).expect("log");
    let stopped = log.lines().rev().find(|l| l.contains("stopped")).expect("a final report");
    let field = |name: &str| -> u64 {
        let at = stopped.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {stopped}"));
        stopped[at + name.len() + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("a number")
    };
    let total = 6_000 + bad.len() as u64 + 1;
    assert_eq!(field("consumed"), total, "{stopped}");
    assert_eq!(field("processed") + field("late") + field("dead_lettered"), total, "{stopped}");
    assert_eq!(field("dead_lettered"), bad.len() as u64);
    assert_eq!(field("late"), 1);

    // The good events alert exactly as a replay of them.
    // The export keeps the records that decode; replay rejects the absurd timestamps again (exit 1).
    let replayed = common::export_and_replay(&env, &cfg, 1);
    let committed = by_id(&env.committed(&cfg, "bad.alerts"), "service");
    assert!(!committed.is_empty());
    assert_same(&committed, &by_id(&replayed, "replay"), "service vs replay");

    // `tripline check --registry`: the subject's latest schema is the stream's own, then one
    // without the counterparty (removing a field is a backward-compatible change).
    let c = cfg.display().to_string();
    let patterns: Vec<String> =
        common::PAYMENT_PATTERNS.iter().map(|p| root.join(format!("patterns/{p}.tl")).display().to_string()).collect();
    let check = || {
        let mut args = vec!["check", "--config", &c, "--registry", &env.registry];
        args.extend(patterns.iter().map(String::as_str));
        env.tripline().args(&args).output().expect("check runs")
    };
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("against the registry's latest schemas"));
    register(&env, "payments-value", &nocp_json);
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.matches("error[schema-breaks-pattern]").count(), 3, "{stdout}");
    assert!(
        stdout.contains("rapid_movement@2 reads `counterparty_account_id`: the writer schema has no such field"),
        "{stdout}"
    );
}
