//! Avro alerts (`outputs.alert_format = "avro"`) against a real broker and registry (the
//! project's `scripts/dev-up`): the service registers the alert schema under the alerts topic's
//! subject and writes Confluent-framed records; a consumer that knows nothing of Tripline reads
//! them through the registry (writer schema by id, generic Avro decoding); they carry the JSON
//! alerts' content (a replay's JSON lines, byte for byte once decoded); `tripline tail` prints
//! them as JSON and `tripline explain --alert` finds one.

mod common;

use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use common::{log_tail, DevEnv, Service};
use schema_registry_converter::blocking::schema_registry::{get_schema_by_id, get_schema_by_subject, SrSettings};
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use serde_json::Value;
use tripline_service::io::alert_avro;

fn field<'a>(record: &'a Avro, name: &str) -> &'a Avro {
    match record {
        Avro::Record(fields) => &fields.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1,
        other => panic!("not a record: {other:?}"),
    }
}

#[test]
fn alerts_in_avro_are_read_through_the_registry_and_carry_the_json_alerts() {
    let env = DevEnv::start();
    let dir = env.dir.path();
    let cfg = common::write_config(dir, "avro", "a", "100ms", "");
    // The same config with Avro alerts and the registry of the test's environment.
    let text = std::fs::read_to_string(&cfg).expect("config").replace(
        "[outputs]\n",
        &format!("[registry]\nurl = \"{}\"\n\n[outputs]\nalert_format = \"avro\"\n", env.registry),
    );
    std::fs::write(&cfg, text).expect("config");
    let c = cfg.display().to_string();
    std::fs::write(dir.join("payments.jsonl"), common::payments(4_000, 300, 11)).expect("events");
    env.run_ok(&["produce", "--config", &c, "--input", "payments.jsonl", "--partitions", "2"]);
    let started = Instant::now();
    let mut svc = Service::start(&env, &cfg, "avro");
    while !(common::http_status(&cfg, "/readyz") == Some(200) && env.caught_up("avro", "payments")) {
        assert!(started.elapsed() < Duration::from_secs(120), "{}", log_tail(&env, "avro"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(svc.stop().success(), "{}", log_tail(&env, "avro"));

    // The subject holds the alert schema.
    let sr = SrSettings::new(env.registry.clone());
    let latest = get_schema_by_subject(&sr, &SubjectNameStrategy::TopicNameStrategy("avro.alerts".into(), false))
        .expect("the subject avro.alerts-value is registered");
    let registered = Schema::parse_str(&latest.schema).expect("an Avro schema");
    assert!(matches!(&registered, Schema::Record(r) if r.name.fullname(None) == "tripline.Alert"));

    // Every record is framed: magic byte 0, then the id of that schema; a generic reader with
    // the writer schema from the registry decodes it.
    let records = common::records(&env, "avro.alerts");
    assert!(records.len() >= 50, "alerts raised: {}", records.len());
    let mut decoded = Vec::new();
    for (_, bytes) in &records {
        assert_eq!(bytes[0], 0, "Confluent framing");
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        assert_eq!(id, latest.id, "framed with the registered id");
        let writer =
            Schema::parse_str(&get_schema_by_id(id, &sr).expect("the id is in the registry").schema).expect("parses");
        let mut datum = &bytes[5..];
        let value = apache_avro::reader::datum::GenericDatumReader::builder(&writer)
            .build()
            .and_then(|r| r.read_value(&mut datum))
            .expect("a generic reader decodes it");
        assert!(datum.is_empty(), "nothing after the datum");
        assert!(matches!(field(&value, "alert_id"), Avro::String(s) if s.len() == 32));
        assert!(matches!(field(&value, "mode"), Avro::String(s) if s == "live"));
        assert!(matches!(field(&value, "fields"), Avro::Array(f) if !f.is_empty()));
        decoded.push(alert_avro::decode(&bytes[5..], &writer).expect("the JSON alert"));
    }

    // The same content as the JSON alerts: a replay of the topic (which writes JSON lines).
    let sets = env.committed(&cfg, "tripline.pattern-sets");
    let set = sets.iter().rev().find(|l| l.contains("\"group\":\"avro\"")).expect("the group's set");
    let set: Value = serde_json::from_str(set).expect("JSON");
    env.run_ok(&["replay", "--config", &c, "--pattern-set", set["set"].as_str().expect("hash"), "--output", "r.jsonl"]);
    let mut replayed: Vec<String> =
        std::fs::read_to_string(dir.join("r.jsonl")).expect("replay").lines().map(str::to_owned).collect();
    let mut sorted = decoded.clone();
    replayed.sort();
    sorted.sort();
    assert_eq!(sorted, replayed, "the Avro alerts decode to the replay's JSON lines, byte for byte");

    // `tripline tail` prints them as JSON.
    let tail = env.run_ok(&["tail", "--config", &c, "--topic", "avro.alerts", "--idle", "3"]);
    let mut tailed: Vec<String> = tail.lines().map(str::to_owned).collect();
    tailed.sort();
    assert_eq!(tailed, sorted, "tail prints the JSON alerts");

    // `tripline explain --alert` finds an Avro alert by its id.
    let first: Value = serde_json::from_str(&decoded[0]).expect("JSON");
    let id = first["alert_id"].as_str().expect("id");
    let out = env.run_ok(&["explain", "--config", &c, "--alert", id]);
    assert!(out.contains(first["pattern"].as_str().expect("pattern")), "{out}");
}
