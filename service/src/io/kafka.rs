//! Kafka client settings shared by every command that talks to a broker, the schema registry
//! client settings, the topic administration the service and the tools need, producing one
//! record, and librdkafka's log lines routed to `tracing`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use schema_registry_converter::blocking::schema_registry::SrSettings;

use crate::core::config::{is_secret_property, Config};
use crate::error::{Error, Kind, Result, ResultExt};

/// How long metadata and admin requests may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A client configuration: bootstrap servers and the configured pass-through properties.
pub fn client_config(cfg: &Config) -> Result<ClientConfig> {
    let bootstrap = cfg.kafka.bootstrap_servers.as_deref().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        Error::usage("no Kafka bootstrap servers: set kafka.bootstrap_servers or TRIPLINE_KAFKA_BOOTSTRAP")
    })?;
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c.set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &cfg.kafka.properties {
        c.set(k, &v.0);
    }
    Ok(c)
}

/// Removes secret property values from a client error message (librdkafka quotes values it
/// rejects).
pub fn redact(cfg: &Config, message: &str) -> String {
    let mut m = message.to_owned();
    for (k, v) in &cfg.kafka.properties {
        if is_secret_property(k) && !v.0.is_empty() {
            m = m.replace(&v.0, "***");
        }
    }
    if let Some(p) = &cfg.registry.password {
        if !p.0.is_empty() {
            m = m.replace(&p.0, "***");
        }
    }
    m
}

/// Creates a client, with secrets removed from any error.
pub fn create<T, C>(cfg: &Config, client: &ClientConfig, context: C, what: &str) -> Result<T>
where
    C: ClientContext,
    T: rdkafka::config::FromClientConfigAndContext<C>,
{
    client
        .create_with_context(context)
        .map_err(|e| Error::failed(format!("cannot create the {what}: {}", redact(cfg, &e.to_string()))))
}

/// The schema registry client settings.
pub fn registry(cfg: &Config) -> Result<SrSettings> {
    let url = cfg
        .registry
        .url
        .as_deref()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| Error::usage("no schema registry: set registry.url or TRIPLINE_REGISTRY_URL"))?;
    let mut b = SrSettings::new_builder(url.trim_end_matches('/').to_owned());
    b.set_timeout(Duration::from_secs(10));
    if let Some(user) = &cfg.registry.username {
        b.set_basic_authorization(user, cfg.registry.password.as_ref().map(|p| p.0.as_str()));
    }
    b.build().map_err(|e| Error::usage(format!("schema registry client: {}", redact(cfg, &e.to_string()))))
}

/// Partition counts of `topics` (None: the topic does not exist).
pub fn partition_counts<C: ConsumerContext>(consumer: &BaseConsumer<C>, topics: &[&str]) -> Result<Vec<Option<usize>>> {
    let md =
        consumer.fetch_metadata(None, REQUEST_TIMEOUT).or_fail(Kind::Failed, "cannot read the cluster metadata")?;
    Ok(topics
        .iter()
        .map(|t| md.topics().iter().find(|m| m.name() == *t && m.error().is_none()).map(|m| m.partitions().len()))
        .collect())
}

/// Creates the topics that do not exist yet: (name, partitions, compacted).
pub fn ensure_topics(cfg: &Config, topics: &[(String, i32, bool)]) -> Result<()> {
    let client = client_config(cfg)?;
    let probe: BaseConsumer = create(cfg, &client, rdkafka::consumer::DefaultConsumerContext, "metadata client")?;
    let names: Vec<&str> = topics.iter().map(|(n, _, _)| n.as_str()).collect();
    let counts = partition_counts(&probe, &names)?;
    let missing: Vec<&(String, i32, bool)> =
        topics.iter().zip(&counts).filter(|(_, c)| c.is_none()).map(|(t, _)| t).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let brokers = probe
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .or_fail(Kind::Failed, "cannot read the cluster metadata")?
        .brokers()
        .len() as i32;
    let (replication, min_insync) = replication(cfg, brokers)?;
    let admin: AdminClient<DefaultClientContext> = create(cfg, &client, DefaultClientContext, "admin client")?;
    let min_insync_text = min_insync.map(|n| n.to_string());
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(name, parts, compact)| {
            let mut t = NewTopic::new(name, *parts, TopicReplication::Fixed(replication));
            if let Some(n) = &min_insync_text {
                t = t.set("min.insync.replicas", n);
            }
            if *compact {
                t.set("cleanup.policy", "compact")
            } else {
                t
            }
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .or_fail(Kind::Failed, "a runtime for the admin client")?;
    let results = rt
        .block_on(admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT))))
        .or_fail(Kind::Failed, "cannot create topics")?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists")
            }
            Err((name, code)) => {
                return Err(Error::failed(format!(
                    "cannot create topic `{name}` (replication factor {replication}, {brokers} broker(s)): {code}"
                )))
            }
        }
    }
    Ok(())
}

/// The replication factor and `min.insync.replicas` (None: the broker's default) of the topics
/// the service creates, on a cluster of `brokers`: as configured, else 3 and 2, fewer where the
/// cluster has fewer brokers (a development broker gets 1 and its default).
fn replication(cfg: &Config, brokers: i32) -> Result<(i32, Option<i32>)> {
    let o = &cfg.outputs;
    let rf = match o.replication_factor {
        Some(n) if n < 1 => {
            return Err(Error::usage(format!("outputs.replication_factor is {n}: it must be 1 or more")))
        }
        Some(n) => n,
        None if brokers < DEFAULT_REPLICATION => {
            tracing::warn!(
                brokers,
                "the cluster has fewer brokers than the default replication factor {DEFAULT_REPLICATION}: topics are \
                 created with {}; set outputs.replication_factor to choose",
                brokers.max(1)
            );
            brokers.max(1)
        }
        None => DEFAULT_REPLICATION,
    };
    let min_insync = match o.min_insync_replicas {
        Some(n) if n < 1 || n > rf => {
            return Err(Error::usage(format!(
                "outputs.min_insync_replicas is {n}: it must be between 1 and the replication factor ({rf})"
            )))
        }
        Some(n) => Some(n),
        None if rf > 1 => Some(rf - 1),
        None => None,
    };
    Ok((rf, min_insync))
}

/// The replication factor of created topics when the cluster has enough brokers.
const DEFAULT_REPLICATION: i32 = 3;

/// The largest record the producer sends: `message.max.bytes` as configured in
/// `kafka.properties`, else librdkafka's default.
pub fn max_record_bytes(cfg: &Config) -> Result<usize> {
    match cfg.kafka.properties.get("message.max.bytes") {
        None => Ok(1_000_000),
        Some(v) => v.0.trim().parse().map_err(|_| {
            Error::usage(format!("kafka.properties: message.max.bytes = `{}` is not a number of bytes", v.0))
        }),
    }
}

/// The value of a record's header `name` (the last one of that name), as text.
pub fn header(msg: &impl Message, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let hs = msg.headers()?;
    hs.iter().filter(|h| h.key == name).last().and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Produces one record (in the open transaction, if any), waiting while the local queue is full.
pub fn produce<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> Result<()> {
    produce_at(producer, topic, partition, None, key, payload, headers)
}

/// [`produce`] with the record's timestamp (else the producer's clock).
pub fn produce_at<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    partition: Option<i32>,
    timestamp: Option<i64>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> Result<()> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
    if let Some(ts) = timestamp {
        record = record.timestamp(ts);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = payload {
        record = record.payload(v);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(Error::failed(format!("cannot produce to `{topic}`: {e}"))),
        }
    }
}

/// Routes librdkafka's log lines to `tracing`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Logger;

impl ClientContext for Logger {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_rdkafka(level, fac, log_message);
    }
}

impl ProducerContext for Logger {
    type DeliveryOpaque = ();
    // Delivery failures surface as a failed commit of the transaction.
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// The transactional producer's context: logs as [`Logger`] does, raises `connection_lost`
/// when a connection to the broker fails (see [`is_connection_loss`]), and keeps where the
/// records produced to one topic (the changelog) landed, per partition.
#[derive(Debug, Default)]
pub struct TxnContext {
    pub connection_lost: Arc<AtomicBool>,
    /// The topic whose records' offsets are kept (`delivered`).
    pub tracked: String,
    /// Per partition of `tracked`, the offset of the last record delivered since it was cleared.
    pub delivered: Mutex<HashMap<i32, i64>>,
}

impl TxnContext {
    pub fn new(connection_lost: Arc<AtomicBool>, tracked: &str) -> TxnContext {
        TxnContext { connection_lost, tracked: tracked.to_owned(), delivered: Mutex::default() }
    }

    /// The delivered offsets kept, emptied.
    pub fn take_delivered(&self) -> HashMap<i32, i64> {
        std::mem::take(&mut *self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

impl ClientContext for TxnContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_rdkafka(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code().is_some_and(is_connection_loss) {
            self.connection_lost.store(true, Ordering::SeqCst);
        }
        tracing::warn!(target: "librdkafka", "producer: {error}: {reason}");
    }
}

impl ProducerContext for TxnContext {
    type DeliveryOpaque = ();
    // Delivery failures surface as a failed commit of the transaction.
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            if m.topic() == self.tracked {
                let mut d = self.delivered.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let at = d.entry(m.partition()).or_insert(m.offset());
                *at = (*at).max(m.offset());
            }
        }
    }
}

/// Whether an error says a broker connection went down (the broker may have restarted).
pub fn is_connection_loss(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
}

/// Logs one of librdkafka's lines at its level, target `librdkafka`.
pub fn log_rdkafka(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "{fac}: {msg}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{fac}: {msg}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {msg}"),
    }
}
