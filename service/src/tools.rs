//! Tools around the service: `tripline produce` (JSON-lines events to Avro records, schemas
//! registered), `tripline tail` (a topic's committed records) and `tripline export` (a stream's
//! committed records, decoded, as JSON lines with their coordinates: the input of a replay).

use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use schema_registry_converter::blocking::schema_registry::post_schema;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde_json::Value as Json;

use crate::avro_in::{frame, AvroIn, DecodeError};
use crate::config::{self, Config};
use crate::kafka::{self, REQUEST_TIMEOUT};
use crate::pipeline::StreamPlan;

/// A stream as the tools see it: topic, Avro schema and the registered id.
struct Target {
    topic: String,
    schema: Schema,
    schema_id: u32,
    /// Record type name of each union branch (one entry for a plain record).
    branches: Vec<String>,
    key: Option<String>,
}

fn load(config: Option<&Path>) -> Result<(Config, std::path::PathBuf)> {
    let path = config::locate(config)?;
    let cfg = Config::load_with_env(&path)?;
    Ok((cfg, path))
}

/// `tripline produce`: registers each stream's schema (subject `<topic>-value`), creates
/// missing topics with `partitions` partitions and produces the events of `input` (JSON lines
/// `{"stream", "type", "value"}`; an optional `"partition"` is kept) as Confluent-framed Avro,
/// keyed by the stream's `key` field.
pub fn produce(config: Option<&Path>, input: &Path, partitions: i32) -> Result<u64> {
    let (cfg, path) = load(config)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let registry = kafka::registry(&cfg)?;
    let text = std::fs::File::open(input).with_context(|| format!("cannot read {}", input.display()))?;
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    let mut client = kafka::client_config(&cfg)?;
    client.set("partitioner", "murmur2_random").set("linger.ms", "20").set("enable.idempotence", "true");
    let producer: BaseProducer = kafka::create(&cfg, &client, rdkafka::producer::DefaultProducerContext, "producer")?;
    let mut sent = 0u64;
    let started = Instant::now();
    for (i, line) in std::io::BufReader::new(text).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}:{n}", input.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{n}", input.display());
        let j: Json = serde_json::from_str(&line).with_context(|| format!("{}: not JSON", at()))?;
        let stream = j["stream"].as_str().with_context(|| format!("{}: no \"stream\"", at()))?;
        if !targets.contains_key(stream) {
            let s = cfg.streams.get(stream).with_context(|| format!("{}: unknown stream `{stream}`", at()))?;
            let json = std::fs::read_to_string(base.join(&s.schema))
                .with_context(|| format!("cannot read the schema of stream `{stream}`"))?;
            let schema = Schema::parse_str(&json).with_context(|| format!("the schema of stream `{stream}`"))?;
            let subject = format!("{}-value", s.topic);
            let registered = post_schema(&registry, subject.clone(), SuppliedSchema::new(None, SchemaType::Avro, json))
                .map_err(|e| anyhow!("cannot register the schema of `{stream}` as `{subject}`: {e}"))?;
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
        let value = to_avro(t, j["type"].as_str(), &j["value"]).with_context(at)?;
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&t.schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .map_err(|e| anyhow!("{}: {e}", at()))?;
        let payload = frame(t.schema_id, &datum);
        let key = t.key.as_ref().and_then(|k| j["value"].get(k)).map(|v| match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        });
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&t.topic).payload(&payload);
        if let Some(k) = &key {
            record = record.key(k);
        }
        if let Some(p) = j.get("partition").and_then(Json::as_i64) {
            record = record.partition(p as i32);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => bail!("{}: cannot produce: {e}", at()),
            }
        }
        sent += 1;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).context("not every record was delivered")?;
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
    let generic = Avro::try_from(value.clone()).map_err(|e| anyhow!("not an Avro value: {e}"))?;
    match &t.schema {
        Schema::Union(u) => {
            let want = type_name.context("the stream has several record types: say which with \"type\"")?;
            let idx = t
                .branches
                .iter()
                .position(|b| b == want || b.rsplit('.').next() == Some(want))
                .with_context(|| format!("no record type `{want}` in the stream's schema"))?;
            let branch = &u.variants()[idx];
            let v = generic
                .resolve_schemata(branch, vec![&t.schema])
                .map_err(|e| anyhow!("does not fit record type `{want}`: {e}"))?;
            Ok(Avro::Union(idx as u32, Box::new(v)))
        }
        schema => generic.resolve(schema).map_err(|e| anyhow!("does not fit the stream's schema: {e}")),
    }
}

/// `tripline tail`: prints the committed records of `topic` (values, one per line) from the
/// beginning; stops after `max` records, or when nothing new came for `idle` (if given).
pub fn tail(config: Option<&Path>, topic: &str, max: Option<u64>, idle: Option<Duration>, keys: bool) -> Result<u64> {
    let (cfg, _) = load(config)?;
    let consumer = reader(&cfg)?;
    // The topic may be about to be created (by a service starting up): wait for it a while.
    let wait = idle.unwrap_or(Duration::from_secs(30));
    let started = Instant::now();
    let parts = loop {
        if let Some(n) = kafka::partition_counts(&consumer, &[topic])?[0] {
            break n;
        }
        if started.elapsed() >= wait {
            bail!("no topic `{topic}` (waited {wait:?})");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).context("assignment")?;
    }
    consumer.assign(&tpl).context("cannot read the topic")?;
    let out = std::io::stdout();
    let mut w = out.lock();
    let mut n = 0u64;
    let mut last = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        if max.is_some_and(|m| n >= m) || idle.is_some_and(|d| last.elapsed() >= d) {
            break;
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                n += 1;
                if keys {
                    let k = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                    let _ = write!(w, "{}/{}\t{k}\t", m.partition(), m.offset());
                }
                let _ = w.write_all(m.payload().unwrap_or_default());
                if w.write_all(b"\n").and_then(|()| w.flush()).is_err() {
                    break;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => tracing::warn!("{e}"),
        }
    }
    Ok(n)
}

/// A consumer outside any group that reads committed records only and never commits.
fn reader(cfg: &Config) -> Result<BaseConsumer> {
    let mut c = kafka::client_config(cfg)?;
    c.set("group.id", format!("{}.reader", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    kafka::create(cfg, &c, rdkafka::consumer::DefaultConsumerContext, "reader")
}

/// `tripline export`: the committed records of a stream's topic, from the beginning to the end
/// it has when the export starts, decoded through the registry as the service decodes them,
/// as JSON lines `{"stream","type","value","partition","offset"}` in partition then offset
/// order. Records the service would dead-letter are counted and left out.
pub fn export(config: Option<&Path>, stream: &str, output: &Path) -> Result<(u64, u64)> {
    let setup = crate::run::setup(config)?;
    let plan: Arc<StreamPlan> = setup
        .plans
        .values()
        .find(|p| p.name == stream)
        .cloned()
        .with_context(|| format!("no pattern reads stream `{stream}` (or there is no such stream)"))?;
    let mut avro: AvroIn = setup.avro;
    let consumer = reader(&setup.cfg)?;
    let parts =
        kafka::partition_counts(&consumer, &[&plan.topic])?[0].with_context(|| format!("no topic `{}`", plan.topic))?;
    let file = std::fs::File::create(output).with_context(|| format!("cannot write {}", output.display()))?;
    let mut w = BufWriter::new(file);
    let (mut written, mut rejected) = (0u64, 0u64);
    for p in 0..parts as i32 {
        let (lo, hi) = consumer.fetch_watermarks(&plan.topic, p, REQUEST_TIMEOUT).context("partition ends")?;
        if hi <= lo {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&plan.topic, p, Offset::Offset(lo)).context("assignment")?;
        consumer.assign(&tpl).context("cannot read the topic")?;
        let mut last = Instant::now();
        loop {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    match avro.decode_json(&plan, m.payload()) {
                        Ok((ty, value)) => {
                            let mut line = serde_json::json!({"stream": plan.name, "value": value,
                                "partition": m.partition(), "offset": m.offset()});
                            if let Some(t) = ty {
                                line["type"] = Json::String(t);
                            }
                            writeln!(w, "{line}").context("writing the export")?;
                            written += 1;
                        }
                        Err(DecodeError::Reject(_)) => rejected += 1,
                        Err(DecodeError::Unavailable(e)) => bail!("{e}"),
                    }
                    if m.offset() + 1 >= hi {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => tracing::warn!("{e}"),
                None if last.elapsed() > Duration::from_secs(60) => {
                    bail!("reading {}/{p} stalled (an open transaction blocks read_committed readers)", plan.topic)
                }
                None => {}
            }
        }
    }
    w.flush().context("writing the export")?;
    Ok((written, rejected))
}
