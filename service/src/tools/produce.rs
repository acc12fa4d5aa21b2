//! `tripline produce`: JSON-lines events to Confluent-framed Avro records of their streams'
//! topics, with the streams' schemas registered (subject `<topic>-value`) and missing topics
//! created.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use rdkafka::producer::{BaseProducer, Producer};
use schema_registry_converter::blocking::schema_registry::post_schema;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde_json::Value as Json;

use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::avro::frame;
use crate::io::kafka::{self, produce as send};

/// A stream as the tools see it: topic, Avro schema and the registered id.
struct Target {
    topic: String,
    schema: Schema,
    schema_id: u32,
    /// Record type name of each union branch (one entry for a plain record).
    branches: Vec<String>,
    key: Option<String>,
}

/// `tripline produce`: registers each stream's schema (subject `<topic>-value`), creates
/// missing topics with `partitions` partitions and produces the events of `input` (JSON lines
/// `{"stream", "type", "value"}`; an optional `"partition"` is kept) as Confluent-framed Avro,
/// keyed by the stream's `key` field. The number of records produced.
pub fn produce(config: Option<&Path>, input: &Path, partitions: i32) -> Result<u64> {
    let (cfg, path) = super::load(config)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let registry = kafka::registry(&cfg)?;
    let text = std::fs::File::open(input).or_fail_with(Kind::Usage, || format!("cannot read {}", input.display()))?;
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    let mut client = kafka::client_config(&cfg)?;
    client.set("partitioner", "murmur2_random").set("linger.ms", "20").set("enable.idempotence", "true");
    let producer: BaseProducer = kafka::create(&cfg, &client, rdkafka::producer::DefaultProducerContext, "producer")?;
    let mut sent = 0u64;
    let started = Instant::now();
    for (i, line) in std::io::BufReader::new(text).lines().enumerate() {
        let n = i + 1;
        let at = || format!("{}:{n}", input.display());
        let line = line.or_fail_with(Kind::Usage, at)?;
        if line.trim().is_empty() {
            continue;
        }
        let j: Json = serde_json::from_str(&line).or_fail_with(Kind::Invalid, || format!("{}: not JSON", at()))?;
        let stream = j["stream"].as_str().ok_or_else(|| Error::invalid(format!("{}: no \"stream\"", at())))?;
        if !targets.contains_key(stream) {
            let s = cfg
                .streams
                .get(stream)
                .ok_or_else(|| Error::invalid(format!("{}: unknown stream `{stream}`", at())))?;
            let json = std::fs::read_to_string(base.join(&s.schema))
                .or_fail_with(Kind::Usage, || format!("cannot read the schema of stream `{stream}`"))?;
            let schema =
                Schema::parse_str(&json).or_fail_with(Kind::Usage, || format!("the schema of stream `{stream}`"))?;
            let subject = format!("{}-value", s.topic);
            let registered = post_schema(&registry, subject.clone(), SuppliedSchema::new(None, SchemaType::Avro, json))
                .or_fail_with(Kind::Failed, || format!("cannot register the schema of `{stream}` as `{subject}`"))?;
            kafka::ensure_topics(&cfg, &[(s.topic.clone(), partitions, false)])?;
            let branches = match &schema {
                Schema::Union(u) => u.variants().iter().map(record_name).collect(),
                other => vec![record_name(other)],
            };
            tracing::info!(stream, subject = %subject, id = registered.id, "schema registered");
            targets.insert(
                stream.to_owned(),
                Target { topic: s.topic.clone(), schema, schema_id: registered.id, branches, key: s.key.clone() },
            );
        }
        let t = &targets[stream];
        let value = to_avro(t, j["type"].as_str(), &j["value"]).map_err(|e| e.context(at()))?;
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&t.schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .or_fail_with(Kind::Invalid, at)?;
        let payload = frame(t.schema_id, &datum);
        let key = t.key.as_ref().and_then(|k| j["value"].get(k)).map(|v| match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        });
        let partition = j.get("partition").and_then(Json::as_i64).map(|p| p as i32);
        send(&producer, &t.topic, partition, key.as_deref().map(str::as_bytes), Some(&payload), None)
            .map_err(|e| e.context(at()))?;
        sent += 1;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).or_fail(Kind::Failed, "not every record was delivered")?;
    tracing::info!(records = sent, ms = started.elapsed().as_millis() as u64, "produced");
    Ok(sent)
}

fn record_name(s: &Schema) -> String {
    match s {
        Schema::Record(r) => r.name.name().to_owned(),
        _ => String::new(),
    }
}

/// A JSON record to an Avro value of the target's schema (a union branch chosen by `type`).
fn to_avro(t: &Target, type_name: Option<&str>, value: &Json) -> Result<Avro> {
    let generic = Avro::try_from(value.clone()).or_fail(Kind::Invalid, "not an Avro value")?;
    match &t.schema {
        Schema::Union(u) => {
            let want = type_name
                .ok_or_else(|| Error::invalid("the stream has several record types: say which with \"type\""))?;
            let idx = t
                .branches
                .iter()
                .position(|b| b == want || b.rsplit('.').next() == Some(want))
                .ok_or_else(|| Error::invalid(format!("no record type `{want}` in the stream's schema")))?;
            let branch = &u.variants()[idx];
            let v = generic
                .resolve_schemata(branch, vec![&t.schema])
                .or_fail_with(Kind::Invalid, || format!("does not fit record type `{want}`"))?;
            Ok(Avro::Union(idx as u32, Box::new(v)))
        }
        schema => generic.resolve(schema).or_fail(Kind::Invalid, "does not fit the stream's schema"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use schema_registry_converter::blocking::schema_registry::SrSettings;
    use serde_json::json;

    use super::*;
    use crate::core::plan::StreamPlan;
    use crate::io::avro::AvroIn;

    fn account_events() -> (Target, String) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/schemas/account_events.avsc");
        let json = std::fs::read_to_string(path).expect("schema");
        let schema = Schema::parse_str(&json).expect("parses");
        let branches = match &schema {
            Schema::Union(u) => u.variants().iter().map(record_name).collect(),
            other => vec![record_name(other)],
        };
        (Target { topic: "account_events".into(), schema, schema_id: 7, branches, key: None }, json)
    }

    /// An event of a stream of several record types is written as the union branch its `type`
    /// names (not the first whose fields it has), and the service reads it back as that type.
    #[test]
    fn the_union_branch_is_the_events_type_and_the_service_reads_it_back() {
        let (t, json) = account_events();
        let change = json!({"event_id": "E1", "account_id": "ACC-1", "event_time": 1_740_992_400_000_i64,
            "event_type": "profile_change", "field_changed": "kyc_document", "channel": "app"});
        let value = to_avro(&t, Some("ProfileChange"), &change).expect("fits");
        assert!(matches!(value, Avro::Union(3, _)), "{value:?}");
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&t.schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .expect("encodes");
        let record = frame(t.schema_id, &datum);

        let mut avro = AvroIn::new(
            SrSettings::new("http://127.0.0.1:9".to_owned()),
            "http://127.0.0.1:9",
            &[("account_events".to_owned(), json.clone())],
        )
        .expect("decoder");
        avro.insert_writer_schema(t.schema_id, &json).expect("writer schema");
        let schema = dsl::StreamSchema::from_avro_json("account_events", &json, Some("event_time")).expect("schema");
        let plan = StreamPlan {
            stage: crate::core::plan::Stage::Source { forwards: Vec::new() },
            name: "account_events".into(),
            topic: t.topic.clone(),
            schema: Arc::new(schema),
            out_of_orderness: 0,
            patterns: Vec::new(),
            live_keys: Vec::new(),
        };
        let (type_name, fields) = avro.decode_json(&plan, Some(&record)).expect("decodes");
        assert_eq!(type_name.as_deref(), Some("com.tripline.sample.ProfileChange"));
        assert_eq!(fields, change);
        for event in [avro.decode(&plan, Some(&record), 1), avro.decode_generic(&plan, Some(&record), 1)] {
            let event = event.expect("an event");
            assert_eq!(plan.schema.types[event.kind.index()].name, "ProfileChange");
            let field = plan.schema.field("field_changed").expect("field");
            assert_eq!(event.field(field), &engine::Value::str("kyc_document"));
        }

        // A type the stream does not have, or none, is refused.
        assert!(to_avro(&t, Some("KycChange"), &change).is_err());
        assert!(to_avro(&t, None, &change).is_err());
    }
}
