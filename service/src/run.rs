//! `tripline run`: the service. A consumer group over the streams' topics; each record decoded
//! through the schema registry and fed to its partition's engine state ([`Partition`]); alerts,
//! late events, timeouts and dead letters produced in a Kafka transaction together with the
//! changed state (the changelog) and the consumed offsets, one transaction per commit interval.
//!
//! Exactly once: outputs, state and offsets commit or abort together. After an abort (a failed
//! commit, a fenced generation) every partition is rebuilt from the local store, which holds
//! exactly the last committed state, and the consumer seeks back to the matching offsets. After
//! a crash or on assignment, a partition's state comes from the local store when its stored
//! position is the group's committed offset, else from the changelog (read_committed).
//!
//! Threads: this loop owns the consumer, the producer and all engine state (behind one mutex,
//! which the rebalance callback takes from inside `poll`, on this same thread); a small tokio
//! runtime serves `/healthz` and `/readyz` and turns SIGTERM/SIGINT into a shutdown request.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use engine::runtime::Config as OpConfig;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::avro_in::{AvroIn, DecodeError};
use crate::config::{self, Config};
use crate::kafka::{self, REQUEST_TIMEOUT};
use crate::metrics::Metrics;
use crate::pattern_sets::{self, PatternSet, Position};
use crate::pipeline::{
    admit, seq_of, state_prefix, stored_position, Emit, Partition, PatternCounts, Reads, StreamPlan,
};
use crate::store::Store;
use crate::{replay, EXIT_INVALID, EXIT_OK, EXIT_USAGE};

/// The largest state record the changelog takes (Kafka's default `message.max.bytes` is about
/// 1 MB). One key's state beyond it stops the service with a message rather than failing every
/// commit: `engine.max_partial_matches_per_key` bounds it.
const MAX_STATE_RECORD: usize = 900 * 1024;

/// How long a transaction operation may take before it counts as failed.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Gauges are set after every commit, and at least this often when nothing is committed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Process-wide flags shared with the HTTP server and the signal handler.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once every assigned partition's state is restored; cleared during rebalances.
    pub ready: AtomicBool,
    /// SIGTERM/SIGINT seen: finish the transaction and leave.
    pub shutdown: AtomicBool,
    /// Wall-clock ms of the loop's last turn (liveness).
    pub alive_ms: AtomicI64,
    /// SIGHUP seen: compile the pattern files again and activate them.
    pub reload: AtomicBool,
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs the service until SIGTERM/SIGINT; the exit status.
pub fn run(config: Option<&Path>) -> u8 {
    crate::init_logging();
    let health = Arc::new(Health::default());
    match serve(config, health) {
        Ok(()) => EXIT_OK,
        Err(e) if e.is::<Usage>() => {
            tracing::error!("{e:#}");
            EXIT_USAGE
        }
        Err(e) => {
            tracing::error!("{e:#}");
            EXIT_INVALID
        }
    }
}

/// A configuration or setup problem (exit status 2), as opposed to a failure while running.
#[derive(Debug)]
pub struct Usage(pub String);
impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

/// A shutdown request cut a state restore short (not a failure).
#[derive(Debug)]
struct Interrupted;
impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("shutdown requested during the state restore")
    }
}
impl std::error::Error for Interrupted {}

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Usage(e.to_string()))
}

/// Everything `run` derives from the configuration before touching Kafka.
pub struct Setup {
    pub cfg: Config,
    /// Per input topic.
    pub plans: BTreeMap<String, Arc<StreamPlan>>,
    pub avro: AvroIn,
    pub op_config: OpConfig,
    pub base: std::path::PathBuf,
    /// What a reload compiles again: the pattern paths, the streams' schemas, the config file.
    pub sources: Sources,
    /// The pattern set, with its sources (recorded when it takes effect).
    pub set: PatternSet,
}

/// The inputs of the pattern set, kept for reloads.
pub struct Sources {
    pub pattern_paths: Vec<std::path::PathBuf>,
    pub catalog: dsl::Catalog,
    pub config_path: std::path::PathBuf,
    /// The streams as configured at start (a reload changes patterns, not streams).
    pub streams: BTreeMap<String, config::StreamConfig>,
    /// Whether timed-out partial matches are published.
    pub timeouts: bool,
}

/// Loads and checks the configuration and the patterns.
pub fn setup(config: Option<&Path>) -> Result<Setup> {
    let path = config::locate(config).map_err(usage)?;
    let cfg = Config::load_with_env(&path).map_err(|e| usage(format!("{e:#}")))?;
    let catalog = cfg.catalog(&path).map_err(|e| usage(format!("{e:#}")))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let pattern_paths: Vec<_> = cfg.service.patterns.iter().map(|p| base.join(p)).collect();
    let set = replay::compile_patterns(&pattern_paths, &catalog).map_err(|(_, m)| usage(m))?;
    let plans = build_plans(&cfg.streams, &path, &catalog, &set.nfas).map_err(usage)?;
    let avro = avro_for(&cfg, &path, plans.values())?;
    let op_config = OpConfig {
        max_partial_matches_per_key: cfg.engine.max_partial_matches_per_key,
        timeouts: cfg.outputs.timeouts_topic.is_some(),
        ..OpConfig::default()
    };
    let sources = Sources {
        pattern_paths,
        catalog,
        config_path: path,
        streams: cfg.streams.clone(),
        timeouts: cfg.outputs.timeouts_topic.is_some(),
    };
    Ok(Setup { cfg, plans, avro, op_config, base, sources, set })
}

/// The Avro decoder of the streams of `plans` (their schemas read relative to the config file
/// at `config_path`), with the configured schema registry.
pub fn avro_for<'a>(
    cfg: &Config,
    config_path: &Path,
    plans: impl IntoIterator<Item = &'a Arc<StreamPlan>>,
) -> Result<AvroIn> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut readers = Vec::new();
    for plan in plans {
        let s = &cfg.streams[&plan.name];
        let json = std::fs::read_to_string(base.join(&s.schema))
            .with_context(|| format!("cannot read the schema of stream `{}`", plan.name))?;
        readers.push((plan.name.clone(), json));
    }
    AvroIn::new(kafka::registry(cfg).map_err(usage)?, &readers).map_err(usage)
}

/// The plan of every stream some pattern of `nfas` reads, by topic.
fn build_plans(
    streams: &BTreeMap<String, config::StreamConfig>,
    path: &Path,
    catalog: &dsl::Catalog,
    nfas: &[Arc<engine::Nfa>],
) -> Result<BTreeMap<String, Arc<StreamPlan>>, String> {
    let mut plans = BTreeMap::new();
    for (name, s) in streams {
        let patterns: Vec<_> = nfas.iter().filter(|n| &n.meta.stream == name).cloned().collect();
        if patterns.is_empty() {
            continue;
        }
        if s.timestamp_field.is_none() {
            return Err(format!(
                "{}: stream `{name}` has no timestamp_field: the service needs each event's event time",
                path.display()
            ));
        }
        let schema = catalog.streams.get(name).cloned().ok_or("every configured stream is in the catalog")?;
        if let Some(k) = &s.key {
            for n in &patterns {
                let field = &schema.fields[n.meta.key.index()].path;
                if field != k {
                    tracing::warn!(
                        pattern = %n.meta.name, stream = %name,
                        "the pattern is keyed by `{field}` but the topic is partitioned by `{k}`: it sees \
                         each key's events per partition only"
                    );
                }
            }
        }
        if plans.values().any(|p: &Arc<StreamPlan>| p.topic == s.topic) {
            return Err(format!("{}: two streams read topic `{}`", path.display(), s.topic));
        }
        plans.insert(s.topic.clone(), StreamPlan::new(name, s, schema, &patterns));
    }
    if plans.is_empty() {
        return Err("no pattern reads a configured stream: nothing to run".to_owned());
    }
    Ok(plans)
}

fn serve(config: Option<&Path>, health: Arc<Health>) -> Result<()> {
    let Setup { cfg, plans, avro, op_config, base, sources, set } = setup(config)?;
    let patterns: usize = plans.values().map(|p| p.patterns.len()).sum();
    tracing::info!(patterns, streams = plans.len(), group = %cfg.kafka.group_id, instance = %cfg.service.instance_id, "starting");

    let metrics = Arc::new(Metrics::new());
    init_metrics(&metrics, &plans, cfg.outputs.timeouts_topic.is_some());
    let http = crate::http::start(&cfg.service.http_addr, health.clone(), metrics.clone()).map_err(usage)?;

    // Topics: inputs must exist to size the changelog; outputs are created when missing.
    let client = kafka::client_config(&cfg).map_err(usage)?;
    let probe: BaseConsumer =
        kafka::create(&cfg, &client, rdkafka::consumer::DefaultConsumerContext, "metadata client")?;
    let topics: Vec<String> = plans.keys().cloned().collect();
    let inputs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let counts = kafka::partition_counts(&probe, &inputs)?;
    for (t, c) in inputs.iter().zip(&counts) {
        if c.is_none() {
            tracing::warn!(topic = %t, "input topic does not exist yet; it is read once it does");
        }
    }
    let max_parts = counts.iter().flatten().copied().max().unwrap_or(1).max(1) as i32;
    let changelog = cfg.changelog_topic();
    let o = &cfg.outputs;
    let mut wanted = vec![
        (o.alerts_topic.clone(), o.partitions, false),
        (o.shadow_alerts_topic.clone(), o.partitions, false),
        (o.late_topic.clone(), o.partitions, false),
        (o.dead_letter_topic.clone(), o.partitions, false),
        // One partition: the activations in the order they happened.
        (o.pattern_sets_topic.clone(), 1, false),
        (changelog.clone(), max_parts, true),
    ];
    if let Some(t) = &o.timeouts_topic {
        wanted.push((t.clone(), o.partitions, false));
    }
    kafka::ensure_topics(&cfg, &wanted)?;
    let changelog_parts = kafka::partition_counts(&probe, &[changelog.as_str()])?[0]
        .with_context(|| format!("the changelog topic `{changelog}` is not there after creating it"))?
        as i32;
    drop(probe);

    let store = Store::open(&base.join(&cfg.service.state_dir))?;

    let txn_id = format!("{}-{}", cfg.kafka.group_id, cfg.service.instance_id);
    let mut pc = client.clone();
    pc.set("transactional.id", &txn_id).set("enable.idempotence", "true").set("linger.ms", "5");
    let producer: BaseProducer<Logger> = kafka::create(&cfg, &pc, Logger, "producer")?;
    producer.init_transactions(TXN_TIMEOUT).map_err(|e| {
        anyhow!("cannot initialise transactions as `{txn_id}`: {}", kafka::redact(&cfg, &e.to_string()))
    })?;

    let interval = Duration::from_millis(cfg.commit_interval_ms() as u64);
    let mut restore_config = client.clone();
    restore_config
        .set("group.id", format!("{}.restore", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true");
    let core = Core {
        producer,
        store,
        plans,
        avro,
        op_config,
        parts: HashMap::new(),
        in_txn: false,
        txn_started: Instant::now(),
        emit: Vec::new(),
        changelog,
        changelog_parts,
        alerts_topic: o.alerts_topic.clone(),
        shadow_alerts_topic: o.shadow_alerts_topic.clone(),
        late_topic: o.late_topic.clone(),
        dead_letter_topic: o.dead_letter_topic.clone(),
        pattern_sets_topic: o.pattern_sets_topic.clone(),
        instance: cfg.service.instance_id.clone(),
        set,
        timeouts_topic: o.timeouts_topic.clone(),
        min_ts: cfg.service.min_event_time,
        max_ts: cfg.service.max_event_time,
        health: health.clone(),
        totals: Totals::default(),
        fatal: None,
        restore_config,
        metrics,
        sources,
        batch: Batch::default(),
        gauges_at: Instant::now(),
    };
    let shared = Arc::new(Shared { core: Mutex::new(core), assigned: Mutex::new(None) });

    let mut cc = client.clone();
    if cfg.kafka.static_membership {
        // Static membership: a restarted instance (same instance_id) takes its partitions back at
        // once instead of waiting for its dead predecessor's session to expire.
        cc.set("group.instance.id", &txn_id);
    }
    cc.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // A fetch returns after at most this long when there is nothing new (alert latency).
        .set("fetch.wait.max.ms", "100")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // The partitions' ends, for the consumer lag gauges.
        .set("statistics.interval.ms", "1000");
    // The configured properties win over these defaults.
    for (k, v) in &cfg.kafka.properties {
        cc.set(k, &v.0);
    }
    let consumer: BaseConsumer<GroupContext> =
        kafka::create(&cfg, &cc, GroupContext { shared: shared.clone(), ends: Mutex::default() }, "consumer")?;
    consumer.subscribe(&inputs).context("cannot subscribe to the input topics")?;
    drop(client);

    let cfg = Arc::new(cfg);
    let result = main_loop(&consumer, &shared, &health, interval, &cfg);
    // Leave cleanly whatever happened: commit what is done (unless the loop failed), then leave
    // the group so the partitions move at once.
    if result.is_ok() {
        let mut core = lock(&shared);
        if let Err(e) = core.commit(&consumer) {
            tracing::error!("the last commit failed: {e:#}");
        }
        core.totals.log("stopped", core.parts.values().map(HashMap::len).sum());
    }
    consumer.unsubscribe();
    drop(consumer);
    drop(http);
    result
}

fn main_loop(
    consumer: &BaseConsumer<GroupContext>,
    shared: &Arc<Shared>,
    health: &Health,
    interval: Duration,
    cfg: &Config,
) -> Result<()> {
    let mut last_report = Instant::now();
    while !health.shutdown.load(Ordering::Relaxed) {
        health.alive_ms.store(now_ms(), Ordering::Relaxed);
        handle_assignment(consumer, shared)?;
        if health.reload.swap(false, Ordering::Relaxed) {
            lock(shared).reload(consumer)?;
        }
        let wait = {
            let core = lock(shared);
            if let Some(f) = &core.fatal {
                bail!("{f}");
            }
            if core.in_txn {
                interval.saturating_sub(core.txn_started.elapsed()).min(Duration::from_millis(100))
            } else {
                Duration::from_millis(100)
            }
        };
        match consumer.poll(wait) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                let msg = kafka::redact(cfg, &e.to_string());
                if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
                    bail!("the consumer failed: {msg}");
                }
                tracing::warn!("consumer: {msg}");
            }
            Some(Ok(msg)) => {
                handle_assignment(consumer, shared)?;
                lock(shared).handle(&msg, health)?;
            }
        }
        let mut core = lock(shared);
        core.producer.poll(Duration::ZERO);
        if core.in_txn && core.txn_started.elapsed() >= interval {
            core.commit(consumer)?;
        }
        if core.gauges_at.elapsed() >= GAUGE_INTERVAL {
            core.update_gauges(consumer);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            core.totals.log("progress", core.parts.values().map(HashMap::len).sum());
        }
    }
    tracing::info!("shutdown requested: committing and leaving the group");
    Ok(())
}

fn lock(shared: &Shared) -> MutexGuard<'_, Core> {
    shared.core.lock().unwrap_or_else(|p| p.into_inner())
}

fn handle_assignment(consumer: &BaseConsumer<GroupContext>, shared: &Shared) -> Result<()> {
    let pending = shared.assigned.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(list) = pending {
        let mut core = lock(shared);
        core.health.ready.store(false, Ordering::Relaxed);
        core.metrics.ready.set(0);
        core.metrics.rebalances.with_label_values(&["assign"]).inc();
        core.metrics.restore_in_progress.set(1);
        let started = Instant::now();
        let result = core.assign(consumer, &list);
        core.metrics.restore_in_progress.set(0);
        core.metrics.restore_duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                core.record_assignment(consumer, &list)?;
                core.health.ready.store(true, Ordering::Relaxed);
                core.update_gauges(consumer);
            }
            // Nothing was processed for these partitions: the loop stops cleanly next turn.
            Err(e) if e.is::<Interrupted>() => tracing::info!("shutdown requested during the state restore"),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// State shared between the loop and the rebalance callbacks.
struct Shared {
    core: Mutex<Core>,
    /// Partitions assigned by the last rebalance, waiting for their state.
    assigned: Mutex<Option<Vec<(String, i32)>>>,
}

impl Totals {
    fn log(&self, what: &str, partitions: usize) {
        let t = self;
        tracing::info!(
            consumed = t.consumed,
            processed = t.processed,
            late = t.late,
            dead_lettered = t.dead_lettered,
            alerts = t.alerts,
            commits = t.commits,
            aborts = t.aborts,
            commit_ms_avg = t.commit_us / t.commits.max(1) / 1000,
            partitions,
            "{what}"
        );
    }
}

/// Counters over the process's life (logged).
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    consumed: u64,
    processed: u64,
    alerts: u64,
    late: u64,
    dead_lettered: u64,
    commits: u64,
    aborts: u64,
    /// Time spent committing (changelog, offsets, commit), in µs.
    commit_us: u64,
}

struct Core {
    producer: BaseProducer<Logger>,
    store: Store,
    plans: BTreeMap<String, Arc<StreamPlan>>,
    avro: AvroIn,
    op_config: OpConfig,
    /// Assigned partitions' state, by topic and partition.
    parts: HashMap<String, HashMap<i32, Partition>>,
    in_txn: bool,
    txn_started: Instant,
    emit: Vec<Emit>,
    changelog: String,
    changelog_parts: i32,
    alerts_topic: String,
    shadow_alerts_topic: String,
    late_topic: String,
    dead_letter_topic: String,
    pattern_sets_topic: String,
    instance: String,
    /// The running pattern set.
    set: PatternSet,
    timeouts_topic: Option<String>,
    min_ts: i64,
    max_ts: i64,
    health: Arc<Health>,
    totals: Totals,
    /// An error raised inside a rebalance callback, reported by the loop.
    fatal: Option<String>,
    /// Client settings of the changelog reader.
    restore_config: rdkafka::ClientConfig,
    metrics: Arc<Metrics>,
    sources: Sources,
    /// What the open transaction did, for the metrics once it commits.
    batch: Batch,
    /// When the gauges were last set.
    gauges_at: Instant,
}

impl Core {
    fn begin(&mut self) -> Result<()> {
        if !self.in_txn {
            self.producer.begin_transaction().context("cannot begin a transaction")?;
            self.in_txn = true;
            self.txn_started = Instant::now();
        }
        Ok(())
    }

    fn handle(&mut self, msg: &BorrowedMessage<'_>, health: &Health) -> Result<()> {
        let (topic, p, off) = (msg.topic(), msg.partition(), msg.offset());
        let Some(plan) = self.plans.get(topic).cloned() else { return Ok(()) };
        match self.parts.get(topic).and_then(|m| m.get(&p)) {
            // Not (or no longer) ours, or already in the restored state.
            None => return Ok(()),
            Some(part) if off < part.next_offset => return Ok(()),
            Some(_) => {}
        }
        self.begin()?;
        let seq = seq_of(p, off);
        let mut backoff = Duration::from_millis(100);
        let decoded = loop {
            match self.avro.decode(&plan, msg.payload(), seq) {
                Err(DecodeError::Unavailable(m)) => {
                    tracing::warn!("{m}; retrying in {backoff:?}");
                    if health.shutdown.load(Ordering::Relaxed) {
                        // Not consumed: the next owner reads it again.
                        return Ok(());
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Ok(event) => break Ok(event),
                Err(DecodeError::Reject(r)) => break Err(r),
            }
        };
        let mut emit = std::mem::take(&mut self.emit);
        let part = self.parts.get_mut(topic).and_then(|m| m.get_mut(&p)).context("partition state")?;
        part.counts.consumed += 1;
        self.totals.consumed += 1;
        let decode_failed = decoded.is_err();
        part.reads.consumed += 1;
        part.reads.bytes += msg.payload_len() as u64;
        part.reads.decoded += u64::from(!decode_failed);
        let outcome = match decoded.and_then(|ev| admit(&plan, &ev, self.min_ts, self.max_ts).map(|()| ev)) {
            Ok(ev) => {
                let ts = ev.ts;
                if part.process(ev, &mut emit) {
                    Ok(None)
                } else {
                    Ok(Some((ts, part.watermark())))
                }
            }
            Err(r) => Err(r),
        };
        part.next_offset = off + 1;
        part.advanced = true;
        match outcome {
            Ok(None) => {
                self.totals.processed += 1;
                part.reads.processed += 1;
            }
            Ok(Some((ts, wm))) => {
                self.totals.late += 1;
                part.reads.late += 1;
                self.batch.produced(Output::Late, msg.key(), msg.payload());
                let headers = source_headers(msg)
                    .insert(Header { key: "tripline.reason", value: Some("late") })
                    .insert(Header { key: "tripline.event_time", value: Some(&ts.to_string()) })
                    .insert(Header { key: "tripline.watermark", value: Some(&wm.to_string()) });
                produce(&self.producer, &self.late_topic, None, msg.key(), msg.payload(), Some(headers))?;
            }
            Err(r) => {
                part.counts.dead_lettered += 1;
                self.totals.dead_lettered += 1;
                *self.batch.rejects.entry((plan.name.clone(), r.code, decode_failed)).or_default() += 1;
                self.batch.produced(Output::DeadLetter, msg.key(), msg.payload());
                tracing::debug!(topic, partition = p, offset = off, reason = r.code, "dead letter: {}", r.message);
                let headers = source_headers(msg)
                    .insert(Header { key: "tripline.reason", value: Some(r.code) })
                    .insert(Header { key: "tripline.error", value: Some(&r.message) });
                produce(&self.producer, &self.dead_letter_topic, None, msg.key(), msg.payload(), Some(headers))?;
            }
        }
        let ingest = msg.timestamp().to_millis();
        for e in emit.drain(..) {
            match e {
                Emit::Alert { key, json, ts, shadow } => {
                    self.totals.alerts += 1;
                    let (k, v) = (Some(key.as_bytes()), Some(json.as_bytes()));
                    let (topic, out) = if shadow {
                        (&self.shadow_alerts_topic, Output::ShadowAlerts)
                    } else {
                        (&self.alerts_topic, Output::Alerts)
                    };
                    produce(&self.producer, topic, None, k, v, None)?;
                    self.batch.produced(out, k, v);
                    self.batch.latencies.push((ts, ingest));
                }
                Emit::Timeout { key, json } => {
                    if let Some(t) = &self.timeouts_topic {
                        let (k, v) = (Some(key.as_bytes()), Some(json.as_bytes()));
                        produce(&self.producer, t, None, k, v, None)?;
                        self.batch.produced(Output::Timeouts, k, v);
                    }
                }
            }
        }
        self.emit = emit;
        Ok(())
    }

    /// Commits the open transaction: changelog records of the touched partitions, their
    /// offsets, then the commit; on success the local store follows. On failure everything is
    /// rewound to the last commit.
    fn commit(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<()> {
        if !self.in_txn {
            return Ok(());
        }
        let started = Instant::now();
        let mut changes = Vec::new();
        let mut offsets = TopicPartitionList::new();
        let mut records = Vec::new();
        for (t, m) in &mut self.parts {
            for (p, part) in m.iter_mut().filter(|(_, part)| part.advanced) {
                part.advanced = false;
                records.clear();
                part.take_changes(&mut records);
                let counts = part.take_pattern_counts();
                self.batch.patterns.extend(part.plan.patterns.iter().cloned().zip(counts));
                self.batch.add_reads(&part.plan.name, std::mem::take(&mut part.reads));
                offsets.add_partition_offset(t, *p, Offset::Offset(part.next_offset)).context("offsets to commit")?;
                let cp = p % self.changelog_parts;
                for (k, v) in records.drain(..) {
                    if let Some(v) = v.as_ref().filter(|v| v.len() > MAX_STATE_RECORD) {
                        // The key record: partition prefix, `K`, the pattern's 16-digit hash, the key.
                        let at = state_prefix(t, *p).len() + 1 + 16;
                        let key = k
                            .get(at..)
                            .and_then(|b| engine::runtime::Key::decode(b).ok())
                            .map(|k| k.to_string())
                            .unwrap_or_default();
                        bail!(
                            "the state of one key of {t}/{p} ({key}) is {} bytes, more than a changelog record may \
                             be ({MAX_STATE_RECORD}); bound it with engine.max_partial_matches_per_key",
                            v.len()
                        );
                    }
                    produce(&self.producer, &self.changelog, Some(cp), Some(&k), v.as_deref(), None)?;
                    self.batch.produced(Output::Changelog, Some(&k), v.as_deref());
                    changes.push((k, v));
                }
            }
        }
        let result = match consumer.group_metadata() {
            None => Err(anyhow!("the consumer has no group metadata (not in a group)")),
            Some(cgm) => {
                let t0 = started.elapsed();
                let r = self.wait_delivered();
                let r = r.and_then(|()| self.producer.send_offsets_to_transaction(&offsets, &cgm, TXN_TIMEOUT));
                let t1 = started.elapsed();
                let r = r.and_then(|()| self.producer.commit_transaction(TXN_TIMEOUT));
                tracing::debug!(
                    changelog_us = t0.as_micros() as u64,
                    offsets_us = (t1 - t0).as_micros() as u64,
                    commit_us = (started.elapsed() - t1).as_micros() as u64,
                    "commit"
                );
                r.map_err(anyhow::Error::from)
            }
        };
        match result {
            Ok(()) => {
                self.in_txn = false;
                self.totals.commits += 1;
                self.totals.commit_us += started.elapsed().as_micros() as u64;
                self.store.apply(&changes)?;
                self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
                self.metrics.transactions_committed.inc();
                std::mem::take(&mut self.batch).fold_into(&self.metrics);
                self.update_gauges(consumer);
                Ok(())
            }
            Err(e) => {
                self.in_txn = false;
                self.totals.aborts += 1;
                self.metrics.transactions_aborted.inc();
                // Everything in it is done again from the last commit, and counted then.
                self.batch = Batch::default();
                tracing::warn!("commit failed: {e:#}; aborting and rewinding to the last commit");
                if let Some(KafkaError::Transaction(te)) = e.downcast_ref::<KafkaError>() {
                    if te.is_fatal() {
                        bail!("the producer cannot go on ({te}): another instance with the same instance_id, or the broker fenced it");
                    }
                }
                self.producer.abort_transaction(TXN_TIMEOUT).context("cannot abort the transaction")?;
                self.rewind(consumer)
            }
        }
    }

    /// Serves delivery reports until nothing is in flight. `commit_transaction` flushes too, but
    /// rdkafka's flush sleeps in steps of 100 ms between checks, which would put a floor of 100 ms
    /// under every commit.
    fn wait_delivered(&self) -> rdkafka::error::KafkaResult<()> {
        let deadline = Instant::now() + TXN_TIMEOUT;
        self.producer.flush(Duration::ZERO).or_else(|e| match e {
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut) => Ok(()),
            e => Err(e),
        })?;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() >= deadline {
                return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Rebuilds every partition from the store (the last committed state) and seeks back.
    fn rewind(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<()> {
        let list: Vec<(String, i32)> =
            self.parts.iter().flat_map(|(t, m)| m.keys().map(move |p| (t.clone(), *p))).collect();
        for (t, p) in list {
            let part = self.load(&t, p, &self.store.scan(&state_prefix(&t, p))?)?;
            let at = part.next_offset;
            self.parts.entry(t.clone()).or_default().insert(p, part);
            if let Err(e) = consumer.seek(&t, p, Offset::Offset(at), REQUEST_TIMEOUT) {
                tracing::warn!(topic = %t, partition = p, "cannot seek back to {at}: {e}");
            }
        }
        Ok(())
    }

    fn load(&self, topic: &str, p: i32, records: &[(Vec<u8>, Vec<u8>)]) -> Result<Partition> {
        let plan = self.plans.get(topic).with_context(|| format!("no stream reads topic `{topic}`"))?.clone();
        let mut part = Partition::new(plan, p, self.op_config);
        let summary = part
            .restore(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
            .map_err(|e| anyhow!("the state of {topic}/{p} cannot be restored: {e}"))?;
        if summary.stale > 0 {
            tracing::info!(
                topic,
                partition = p,
                stale = summary.stale,
                "dropped the state of patterns that no longer run"
            );
        }
        Ok(part)
    }

    /// Takes over newly assigned partitions: their state from the store when it is current,
    /// else from the changelog.
    fn assign(&mut self, consumer: &BaseConsumer<GroupContext>, list: &[(String, i32)]) -> Result<()> {
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for (t, p) in list {
            tpl.add_partition(t, *p);
        }
        let committed =
            consumer.committed_offsets(tpl, REQUEST_TIMEOUT).context("cannot read the group's committed offsets")?;
        let mut from_changelog = 0;
        for (t, p) in list {
            let committed_at = committed.find_partition(t, *p).and_then(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            });
            let prefix = state_prefix(t, *p);
            let local = self.store.scan(&prefix)?;
            let mut part = if stored_position(t, *p, &local) == committed_at {
                self.metrics.restored_partitions.with_label_values(&["store"]).inc();
                self.load(t, *p, &local)?
            } else {
                from_changelog += 1;
                self.metrics.restored_partitions.with_label_values(&["changelog"]).inc();
                let records = self.read_changelog(t, *p)?;
                self.store.replace(&prefix, &records)?;
                self.load(t, *p, &records)?
            };
            if let Some(c) = committed_at {
                if part.next_offset != c {
                    tracing::warn!(
                        topic = %t, partition = p, state_at = part.next_offset, committed = c,
                        "the state and the committed offset disagree (offsets reset by hand?): following the committed offset"
                    );
                    if part.next_offset == 0 {
                        part.next_offset = c;
                    }
                }
            }
            self.parts.entry(t.clone()).or_default().insert(*p, part);
        }
        tracing::info!(
            partitions = list.len(),
            from_changelog,
            ms = started.elapsed().as_millis() as u64,
            "partitions assigned and restored"
        );
        Ok(())
    }

    /// The committed changelog records of one input partition (latest per key).
    fn read_changelog(&self, topic: &str, p: i32) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cfg_client = self.restore_client()?;
        let cp = p % self.changelog_parts;
        let (lo, hi) = cfg_client
            .fetch_watermarks(&self.changelog, cp, REQUEST_TIMEOUT)
            .with_context(|| format!("cannot read the end of changelog partition {}/{cp}", self.changelog))?;
        let prefix = state_prefix(topic, p);
        let mut latest: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        if hi <= lo {
            return Ok(Vec::new());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.changelog, cp, Offset::Beginning).context("changelog assignment")?;
        cfg_client.assign(&tpl).context("cannot read the changelog")?;
        let mut read = 0u64;
        let mut last_progress = Instant::now();
        let mut progress = crate::progress::Progress::new("restore", "changelog records", Some((hi - lo) as u64));
        progress.set_message(format!("{topic}/{p} from {}/{cp}", self.changelog));
        loop {
            match cfg_client.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    read += 1;
                    progress.inc(1);
                    self.metrics.restore_records.inc();
                    last_progress = Instant::now();
                    if let Some(k) = m.key().filter(|k| k.starts_with(&prefix)) {
                        match m.payload() {
                            Some(v) => {
                                latest.insert(k.to_vec(), v.to_vec());
                            }
                            None => {
                                latest.remove(k);
                            }
                        }
                    }
                    if m.offset() + 1 >= hi {
                        break;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => tracing::warn!("reading the changelog: {e}"),
                None => {}
            }
            if last_progress.elapsed() >= Duration::from_secs(120) {
                bail!(
                    "restoring {topic}/{p} from changelog partition {}/{cp} stalled after {read} of {} records \
                     (an open transaction of a crashed instance blocks read_committed readers until that \
                     instance restarts or the transaction times out)",
                    self.changelog,
                    hi - lo
                );
            }
            if self.health.shutdown.load(Ordering::Relaxed) {
                return Err(anyhow::Error::new(Interrupted));
            }
        }
        progress.finish();
        Ok(latest.into_iter().collect())
    }

    fn restore_client(&self) -> Result<BaseConsumer> {
        // The same client settings as the group consumer, but no group: it never commits.
        self.restore_config.create().map_err(|e| anyhow!("cannot create the changelog reader: {e}"))
    }
}

/// Produces one record (in the open transaction), waiting while the local queue is full.
fn produce(
    producer: &BaseProducer<Logger>,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> Result<()> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
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
            Err((e, _)) => bail!("cannot produce to `{topic}`: {e}"),
        }
    }
}

/// Headers naming a record's source: topic, partition, offset and record timestamp.
fn source_headers(msg: &BorrowedMessage<'_>) -> OwnedHeaders {
    let h = OwnedHeaders::new()
        .insert(Header { key: "tripline.source.topic", value: Some(msg.topic()) })
        .insert(Header { key: "tripline.source.partition", value: Some(&msg.partition().to_string()) })
        .insert(Header { key: "tripline.source.offset", value: Some(&msg.offset().to_string()) });
    match msg.timestamp().to_millis() {
        Some(ts) => h.insert(Header { key: "tripline.source.timestamp", value: Some(&ts.to_string()) }),
        None => h,
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

impl rdkafka::producer::ProducerContext for Logger {
    type DeliveryOpaque = ();
    // Delivery failures surface as a failed commit of the transaction.
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

fn log_rdkafka(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "{fac}: {msg}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{fac}: {msg}"),
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {msg}"),
    }
}

/// The group consumer's context: commits before partitions are revoked, and hands new
/// assignments to the loop.
struct GroupContext {
    shared: Arc<Shared>,
    /// Per input partition, its end (the last stable offset, as read_committed sees it) from the
    /// client's statistics, every second: the consumer lag gauges.
    ends: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_rdkafka(level, fac, log_message);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, t) in statistics.topics {
            for (p, s) in t.partitions {
                let end = if s.ls_offset >= 0 { s.ls_offset } else { s.hi_offset };
                if p >= 0 && end >= 0 {
                    ends.insert((topic.clone(), p), end);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut core = lock(&self.shared);
            core.health.ready.store(false, Ordering::Relaxed);
            // What was processed is committed before the partitions go (the generation is
            // still valid here); if that fails, the transaction is aborted and the next owner
            // reprocesses from the last commit.
            if core.in_txn {
                if let Err(e) = core.commit(consumer) {
                    core.fatal = Some(format!("{e:#}"));
                }
            }
            core.metrics.rebalances.with_label_values(&["revoke"]).inc();
            core.metrics.ready.set(0);
            for e in tpl.elements() {
                if let Some(part) = core.parts.get_mut(e.topic()).and_then(|m| m.remove(&e.partition())) {
                    let labels = [part.plan.name.as_str(), &e.partition().to_string()];
                    for g in [&core.metrics.watermark, &core.metrics.watermark_lag] {
                        let _ = g.remove_label_values(&labels);
                    }
                    let _ = core.metrics.consumer_lag.remove_label_values(&labels);
                }
            }
            tracing::info!(partitions = tpl.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let list = tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                *self.shared.assigned.lock().unwrap_or_else(|p| p.into_inner()) = Some(list);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }
}

/// The output topics, as the metrics' `output` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Alerts,
    ShadowAlerts,
    Late,
    DeadLetter,
    Timeouts,
    Changelog,
    PatternSets,
}

impl Output {
    const ALL: [Output; 7] = [
        Output::Alerts,
        Output::ShadowAlerts,
        Output::Late,
        Output::DeadLetter,
        Output::Timeouts,
        Output::Changelog,
        Output::PatternSets,
    ];

    fn label(self) -> &'static str {
        match self {
            Output::Alerts => "alerts",
            Output::ShadowAlerts => "shadow_alerts",
            Output::Late => "late",
            Output::DeadLetter => "dead_letter",
            Output::Timeouts => "timeouts",
            Output::Changelog => "changelog",
            Output::PatternSets => "pattern_sets",
        }
    }
}

/// What the open transaction did, counted in plain integers and folded into the metrics when
/// it commits (dropped when it aborts: the work is done, and counted, again).
#[derive(Debug, Default)]
struct Batch {
    /// Per stream, what was read.
    streams: HashMap<String, Reads>,
    /// Dead letters by (stream, reason, whether decoding failed).
    rejects: HashMap<(String, &'static str, bool), u64>,
    /// Records and bytes per [`Output`].
    produced: [(u64, u64); Output::ALL.len()],
    /// Per alert: its event time and the Kafka timestamp of the record that triggered it.
    latencies: Vec<(i64, Option<i64>)>,
    /// Per pattern and partition, what the engine counted.
    patterns: Vec<(Arc<engine::Nfa>, PatternCounts)>,
}

impl Batch {
    /// Adds one partition's reads to its stream's (once per partition and commit).
    fn add_reads(&mut self, stream: &str, r: Reads) {
        let sum = self.streams.entry(stream.to_owned()).or_default();
        sum.consumed += r.consumed;
        sum.bytes += r.bytes;
        sum.decoded += r.decoded;
        sum.processed += r.processed;
        sum.late += r.late;
    }

    fn produced(&mut self, out: Output, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let slot = &mut self.produced[out as usize];
        slot.0 += 1;
        slot.1 += (key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len)) as u64;
    }

    /// Adds everything to the metrics; the commit happened now.
    fn fold_into(self, m: &Metrics) {
        for (stream, c) in &self.streams {
            let l = [stream.as_str()];
            m.records_consumed.with_label_values(&l).inc_by(c.consumed);
            m.consumed_bytes.with_label_values(&l).inc_by(c.bytes);
            m.events_decoded.with_label_values(&l).inc_by(c.decoded);
            m.events_processed.with_label_values(&l).inc_by(c.processed);
            m.events_late.with_label_values(&l).inc_by(c.late);
        }
        for ((stream, reason, decode), n) in &self.rejects {
            m.dead_lettered.with_label_values(&[stream.as_str(), reason]).inc_by(*n);
            if *decode {
                m.decode_failures.with_label_values(&[stream.as_str(), reason]).inc_by(*n);
            }
        }
        for out in Output::ALL {
            let (n, bytes) = self.produced[out as usize];
            if n > 0 {
                m.records_produced.with_label_values(&[out.label()]).inc_by(n);
                m.produced_bytes.with_label_values(&[out.label()]).inc_by(bytes);
            }
        }
        let now = now_ms();
        let (from_event, from_ingest) =
            (m.alert_latency.with_label_values(&["event_time"]), m.alert_latency.with_label_values(&["ingest"]));
        for (ts, ingest) in &self.latencies {
            from_event.observe(now.saturating_sub(*ts).max(0) as f64 / 1000.0);
            if let Some(i) = ingest {
                from_ingest.observe(now.saturating_sub(*i).max(0) as f64 / 1000.0);
            }
        }
        for (nfa, c) in &self.patterns {
            let name = nfa.meta.name.as_str();
            m.matches.with_label_values(&[name]).inc_by(c.matches);
            m.alerts.with_label_values(&[name, mode_label(nfa), nfa.meta.severity.as_str()]).inc_by(c.matches);
            m.timeouts.with_label_values(&[name]).inc_by(c.timeouts);
            m.partial_matches_dropped.with_label_values(&[name]).inc_by(c.dropped);
            for (step, position, n) in funnel_steps(nfa).zip(&c.funnel).map(|((v, p), n)| (v, p, *n)) {
                if n > 0 {
                    if let Some((var, pos)) = step.zip(position) {
                        m.funnel_reached.with_label_values(&[name, var, &pos.to_string()]).inc_by(n);
                    }
                }
            }
        }
        m.last_commit.set(now as f64 / 1000.0);
    }
}

fn mode_label(nfa: &engine::Nfa) -> &'static str {
    match nfa.meta.mode {
        engine::Mode::Live => "live",
        engine::Mode::Shadow => "shadow",
    }
}

/// Per variable of the pattern (by `VarId`): its name and position among the steps, or `None`
/// for a negated element (no step of the funnel).
fn funnel_steps(nfa: &engine::Nfa) -> impl Iterator<Item = (Option<&str>, Option<usize>)> + '_ {
    let mut position = 0;
    nfa.vars.iter().map(move |v| {
        if v.negated {
            (None, None)
        } else {
            position += 1;
            (Some(v.name.as_str()), Some(position))
        }
    })
}

/// Sets the information metrics and creates every label set known up front at 0, so that a
/// rate over it is 0 rather than absent before the first event of its kind.
fn init_metrics(m: &Metrics, plans: &BTreeMap<String, Arc<StreamPlan>>, timeouts: bool) {
    let nfas: Vec<Arc<engine::Nfa>> = plans.values().flat_map(|p| p.patterns.iter().cloned()).collect();
    m.build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), crate::metrics::GIT_HASH, &pattern_sets::set_hash(&nfas)])
        .set(1);
    for plan in plans.values() {
        let l = [plan.name.as_str()];
        for c in [&m.records_consumed, &m.consumed_bytes, &m.events_decoded, &m.events_processed, &m.events_late] {
            c.with_label_values(&l);
        }
        m.assigned_partitions.with_label_values(&l).set(0);
        for reason in crate::pipeline::REASONS {
            m.decode_failures.with_label_values(&[plan.name.as_str(), reason]);
            m.dead_lettered.with_label_values(&[plan.name.as_str(), reason]);
        }
    }
    for nfa in &nfas {
        let meta = &nfa.meta;
        let name = meta.name.as_str();
        let version = meta.version.to_string();
        m.pattern_info
            .with_label_values(&[name, &version, &meta.hash, mode_label(nfa), meta.severity.as_str(), &meta.stream])
            .set(1);
        m.matches.with_label_values(&[name]);
        m.alerts.with_label_values(&[name, mode_label(nfa), meta.severity.as_str()]);
        m.timeouts.with_label_values(&[name]);
        m.partial_matches_dropped.with_label_values(&[name]);
        m.active_partial_matches.with_label_values(&[name]).set(0);
        m.active_keys.with_label_values(&[name]).set(0);
        for (var, pos) in funnel_steps(nfa).filter_map(|(v, p)| v.zip(p)) {
            m.funnel_reached.with_label_values(&[name, var, &pos.to_string()]);
        }
    }
    for out in Output::ALL {
        if out != Output::Timeouts || timeouts {
            m.records_produced.with_label_values(&[out.label()]);
            m.produced_bytes.with_label_values(&[out.label()]);
        }
    }
    for from in ["event_time", "ingest"] {
        m.alert_latency.with_label_values(&[from]);
    }
    for kind in ["assign", "revoke"] {
        m.rebalances.with_label_values(&[kind]);
    }
    for source in ["store", "changelog"] {
        m.restored_partitions.with_label_values(&[source]);
    }
    for result in ["ok", "failed"] {
        m.pattern_reloads.with_label_values(&[result]);
    }
}

impl Core {
    /// Sets the gauges from the current state: per pattern, per partition, the store, readiness.
    fn update_gauges(&mut self, consumer: &BaseConsumer<GroupContext>) {
        self.gauges_at = Instant::now();
        let ends = consumer.context().ends.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let m = &self.metrics;
        let now = now_ms();
        let mut per_pattern: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut assigned: HashMap<&str, i64> = self.plans.values().map(|p| (p.name.as_str(), 0)).collect();
        for (topic, parts) in &self.parts {
            for (p, part) in parts {
                let stream = part.plan.name.as_str();
                *assigned.entry(stream).or_default() += 1;
                for op in part.operators() {
                    let e = per_pattern.entry(op.nfa().meta.name.as_str()).or_default();
                    e.0 += op.active_partial_matches();
                    e.1 += op.active_keys();
                }
                let labels = [stream, &p.to_string()];
                let wm = part.watermark();
                if wm != i64::MIN {
                    m.watermark.with_label_values(&labels).set(wm as f64 / 1000.0);
                    m.watermark_lag.with_label_values(&labels).set(now.saturating_sub(wm) as f64 / 1000.0);
                }
                // The end of the partition as the client's last statistics saw it (no request).
                if let Some(&end) = ends.get(&(topic.clone(), *p)) {
                    m.consumer_lag.with_label_values(&labels).set((end - part.next_offset).max(0));
                }
            }
        }
        for plan in self.plans.values() {
            for nfa in &plan.patterns {
                let (partials, keys) = per_pattern.get(nfa.meta.name.as_str()).copied().unwrap_or_default();
                m.active_partial_matches.with_label_values(&[&nfa.meta.name]).set(partials as i64);
                m.active_keys.with_label_values(&[&nfa.meta.name]).set(keys as i64);
            }
        }
        for (stream, n) in assigned {
            m.assigned_partitions.with_label_values(&[stream]).set(n);
        }
        m.state_bytes.set(self.store.size_bytes() as i64);
        m.ready.set(i64::from(self.health.ready.load(Ordering::Relaxed)));
    }
}

impl Core {
    /// Compiles the pattern files again and, if they are good, activates them at a transaction
    /// boundary: the open transaction commits first, the state of patterns that are gone is
    /// deleted (tombstones in the changelog, in a transaction of their own), patterns whose
    /// content hash did not change keep their state, and new ones start at each partition's
    /// watermark. A set that does not compile, or that would change which topics are read, is
    /// refused and the running set stays. Errors are only those that stop the service.
    fn reload(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<()> {
        let refuse = |m: &Metrics, why: String| {
            m.pattern_reloads.with_label_values(&["failed"]).inc();
            tracing::error!("pattern reload refused, the running patterns stay: {why}");
        };
        let src = &self.sources;
        let mut diagnostics = Vec::new();
        let compiled = replay::compile_reporting(&src.pattern_paths, &src.catalog, &mut |d| diagnostics.push(d));
        for d in &diagnostics {
            tracing::error!("pattern reload: {d}");
        }
        let set = match compiled {
            Ok(n) => n,
            Err((_, m)) => {
                let why = match diagnostics.len() {
                    0 => m.trim_start_matches("error: ").to_owned(),
                    n => format!("{n} error(s) in the pattern files (logged above, with file:line:column)"),
                };
                refuse(&self.metrics, why);
                return Ok(());
            }
        };
        let nfas = set.nfas.clone();
        let plans = match build_plans(&src.streams, &src.config_path, &src.catalog, &nfas) {
            Ok(p) => p,
            Err(e) => {
                refuse(&self.metrics, e);
                return Ok(());
            }
        };
        if !plans.keys().eq(self.plans.keys()) {
            let (old, new): (Vec<_>, Vec<_>) = (self.plans.keys().collect(), plans.keys().collect());
            refuse(
                &self.metrics,
                format!("the new set reads topics {new:?}, the running one {old:?}: restart the service to change the topics"),
            );
            return Ok(());
        }
        let running: Vec<Arc<engine::Nfa>> = self.plans.values().flat_map(|p| p.patterns.iter().cloned()).collect();
        let (old_hash, new_hash) = (pattern_sets::set_hash(&running), set.hash());
        // Switch between transactions: everything read so far ran under the old set.
        self.commit(consumer)?;
        if self.in_txn {
            bail!("the transaction before the reload did not commit");
        }
        // Delete the stored state of the patterns that are gone, in this instance's partitions.
        let kept: std::collections::HashSet<&str> = nfas.iter().map(|n| n.meta.hash.as_str()).collect();
        let mut deletes = Vec::new();
        for (t, parts) in &self.parts {
            let plan = &self.plans[t];
            for p in parts.keys() {
                for gone in plan.patterns.iter().filter(|n| !kept.contains(n.meta.hash.as_str())) {
                    for (k, _) in self.store.scan(&crate::pipeline::pattern_prefix(t, *p, &gone.meta.hash))? {
                        deletes.push((*p, k));
                    }
                }
            }
        }
        // The deletes and the record of the new set's activation, in one transaction: the set
        // takes effect at each partition's current position and watermark.
        {
            let record = self.activation_record(&set, "reload", None);
            let result = self.producer.begin_transaction().map_err(anyhow::Error::from).and_then(|()| {
                for (p, k) in &deletes {
                    produce(&self.producer, &self.changelog, Some(p % self.changelog_parts), Some(k), None, None)?;
                }
                let key = set.hash();
                produce(&self.producer, &self.pattern_sets_topic, Some(0), Some(key.as_bytes()), Some(&record), None)?;
                self.producer.commit_transaction(TXN_TIMEOUT).map_err(anyhow::Error::from)
            });
            if let Err(e) = result {
                let _ = self.producer.abort_transaction(TXN_TIMEOUT);
                refuse(
                    &self.metrics,
                    format!("cannot record the new set and delete the removed patterns' state: {e:#}"),
                );
                return Ok(());
            }
            self.metrics.records_produced.with_label_values(&[Output::PatternSets.label()]).inc();
        }
        if !deletes.is_empty() {
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = deletes.into_iter().map(|(_, k)| (k, None)).collect();
            self.store.apply(&records)?;
            self.metrics.records_produced.with_label_values(&["changelog"]).inc_by(records.len() as u64);
        }
        for (t, parts) in &mut self.parts {
            let plan = &plans[t];
            *parts = std::mem::take(parts)
                .into_iter()
                .map(|(p, part)| (p, part.with_plan(plan.clone(), self.op_config)))
                .collect();
        }
        // The metrics: pattern gauges of patterns that are gone, the information metrics.
        let names: std::collections::HashSet<&str> = nfas.iter().map(|n| n.meta.name.as_str()).collect();
        for n in running.iter().filter(|n| !names.contains(n.meta.name.as_str())) {
            let _ = self.metrics.active_partial_matches.remove_label_values(&[&n.meta.name]);
            let _ = self.metrics.active_keys.remove_label_values(&[&n.meta.name]);
        }
        self.metrics.pattern_info.reset();
        self.metrics.build_info.reset();
        init_metrics(&self.metrics, &plans, self.sources.timeouts);
        self.plans = plans;
        self.set = set;
        self.metrics.pattern_reloads.with_label_values(&["ok"]).inc();
        let watermarks: Vec<String> = self
            .parts
            .iter()
            .flat_map(|(t, m)| {
                m.iter().map(move |(p, part)| format!("{t}/{p}@{}:{}", part.next_offset, part.watermark()))
            })
            .collect();
        let versions: Vec<String> =
            nfas.iter().map(|n| format!("{}@{}:{}", n.meta.name, n.meta.version, n.meta.hash)).collect();
        tracing::info!(
            from = %old_hash, to = %new_hash, patterns = %versions.join(" "), positions = %watermarks.join(" "),
            "pattern set activated"
        );
        self.update_gauges(consumer);
        Ok(())
    }
}

impl Core {
    /// The activation record of `set` on the assigned partitions (`only`: these of them).
    fn activation_record(&self, set: &PatternSet, reason: &str, only: Option<&[(String, i32)]>) -> Vec<u8> {
        let mut positions = Vec::new();
        for (t, parts) in &self.parts {
            for (p, part) in parts {
                if only.is_some_and(|l| !l.iter().any(|(lt, lp)| lt == t && lp == p)) {
                    continue;
                }
                let wm = part.watermark();
                positions.push(Position {
                    topic: t.clone(),
                    partition: *p,
                    offset: part.next_offset,
                    watermark: (wm != i64::MIN).then_some(wm),
                });
            }
        }
        positions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let record = set.activation(reason, &self.instance, now_ms(), positions);
        serde_json::to_vec(&record).unwrap_or_default()
    }

    /// Records that the running set takes effect on newly assigned partitions (from their
    /// restored positions), in a transaction of its own, before any of their records is read.
    fn record_assignment(&mut self, consumer: &BaseConsumer<GroupContext>, list: &[(String, i32)]) -> Result<()> {
        if list.is_empty() {
            return Ok(());
        }
        self.commit(consumer)?;
        let record = self.activation_record(&self.set, "assign", Some(list));
        let key = self.set.hash();
        let result = self.producer.begin_transaction().map_err(anyhow::Error::from).and_then(|()| {
            produce(&self.producer, &self.pattern_sets_topic, Some(0), Some(key.as_bytes()), Some(&record), None)?;
            self.producer.commit_transaction(TXN_TIMEOUT).map_err(anyhow::Error::from)
        });
        if let Err(e) = result {
            let _ = self.producer.abort_transaction(TXN_TIMEOUT);
            bail!("cannot record the pattern set's activation in `{}`: {e:#}", self.pattern_sets_topic);
        }
        self.metrics.records_produced.with_label_values(&[Output::PatternSets.label()]).inc();
        tracing::info!(set = %key, partitions = list.len(), topic = %self.pattern_sets_topic, "pattern set activation recorded");
        Ok(())
    }
}
