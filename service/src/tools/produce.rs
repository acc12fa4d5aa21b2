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
