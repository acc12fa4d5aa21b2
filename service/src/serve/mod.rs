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
//! which the rebalance callback takes from inside `poll`, on this same thread). It polls records
//! in batches (what the consumer holds already, up to [`MAX_BATCH`]); within a batch the
//! partitions' records are fed to their engine state on up to `service.threads` scoped threads,
//! one partition per thread at a time and each partition's records in offset order, so the
//! result is the same as one thread's. Decoding and producing stay on this thread; a staged
//! transaction commits on a committer thread while the loop goes on ([`commit`]). A
//! small tokio runtime serves `/healthz` and `/readyz` and turns SIGTERM/SIGINT into a shutdown
//! request.
//!
//! The rooms: this file starts the service and runs the loop; [`records`] handles one consumed
//! record, [`commit`] the transaction (and the rewind after an abort), [`rebalance`] assignment,
//! restore and revocation, [`reload`] a SIGHUP, and [`batch`] the metrics of a transaction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use engine::runtime::Config as OpConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer};

use crate::core::config::{self, AlertFormat, Config};
use crate::core::partition::Partition;
use crate::core::pattern_sets::{compile_files, Deployment, Library, PatternSet};
use crate::core::plan::{build_plans, expose, StreamPlan};
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::alert_avro;
use crate::io::avro::AvroIn;
use crate::io::http::{self, Health};
use crate::io::kafka::{self, TxnContext};
use crate::io::store::{Store, WriteBehind};
use crate::obs::metrics::Metrics;
use crate::obs::{init_logging, now_ms, out};

mod batch;
mod clock;
mod commit;
mod follow;
mod gate;
mod rebalance;
mod records;
mod reload;
mod repartition;
mod tables;

use batch::{init_metrics, Batch};
use commit::{Pending, TXN_TIMEOUT};
use rebalance::{GroupContext, Restored};

/// The most records handled as one batch (see [`Worker::handle_batch`]).
const MAX_BATCH: usize = 2048;

/// How often the loop looks whether a staged transaction has ended, when no records come.
const PENDING_CHECK: Duration = Duration::from_millis(2);

/// Gauges are set after every commit, and at least this often when nothing is committed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the service until SIGTERM/SIGINT. The error is logged here; its kind is the exit status.
pub fn run(config: Option<&Path>) -> Result<()> {
    init_logging();
    let health = Arc::new(Health::default());
    // Signals first: a SIGTERM during start-up stops the service cleanly once it is up.
    let server = http::Server::start(health.clone()).inspect_err(|e| tracing::error!("{e}"))?;
    serve(config, health, &server).inspect_err(|e| tracing::error!("{e}"))
}

/// Everything `run` derives from the configuration before touching Kafka.
struct Setup {
    cfg: Config,
    /// Per input topic.
    plans: BTreeMap<String, Arc<StreamPlan>>,
    avro: AvroIn,
    op_config: OpConfig,
    base: std::path::PathBuf,
    /// What a reload compiles again: the pattern paths, the streams' schemas, the config file.
    sources: Sources,
    /// The pattern set, with its sources (recorded when it takes effect).
    set: PatternSet,
}

/// The inputs of the pattern set, kept for reloads.
struct Sources {
    pattern_paths: Vec<std::path::PathBuf>,
    catalog: dsl::Catalog,
    config_path: std::path::PathBuf,
    /// The streams as configured at start (a reload changes patterns, not streams).
    streams: BTreeMap<String, config::StreamConfig>,
    /// Whether timed-out partial matches are published.
    timeouts: bool,
}

/// Loads and checks the configuration and the patterns.
fn setup(config: Option<&Path>) -> Result<Setup> {
    let path = config::locate(config)?;
    let cfg = Config::load_with_env(&path)?;
    let catalog = cfg.catalog(&path)?;
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let pattern_paths: Vec<_> = cfg.service.patterns.iter().map(|p| base.join(p)).collect();
    // The patterns must compile for the service to start: any problem is a usage error.
    let set = compile_files(&pattern_paths, &catalog, &mut |d| out(&format!("{d}\n"))).map_err(Error::usage)?;
    let plans = build_plans(&cfg.streams, &path, &catalog, &set.nfas, &cfg.kafka.group_id)?;
    let avro = AvroIn::for_plans(&cfg, &path, plans.values())?;
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

fn serve(config: Option<&Path>, health: Arc<Health>, server: &http::Server) -> Result<()> {
    let Setup { cfg, mut plans, mut avro, op_config, base, sources, mut set } = setup(config)?;
    let patterns: usize = plans.values().map(|p| p.patterns.len()).sum();
    tracing::info!(patterns, streams = plans.len(), group = %cfg.kafka.group_id, instance = %cfg.service.instance_id, "starting");

    let metrics = Arc::new(Metrics::new());
    init_metrics(&metrics, &plans, cfg.outputs.timeouts_topic.is_some());
    server.serve(&cfg.service.http_addr, health.clone(), metrics.clone())?;

    // The pattern sets topic first: the latest deployment for the group wins over the files.
    let client = kafka::client_config(&cfg)?;
    kafka::ensure_topics(&cfg, &[(cfg.outputs.pattern_sets_topic.clone(), 1, false)])?;
    let found = follow::start(&cfg, &sources.catalog, &set)?;
    let mut deployment = None;
    if let Some((deployed, d)) = found.deployed {
        if deployed.hash() != set.hash() {
            let path = &sources.config_path;
            plans = build_plans(&cfg.streams, path, &sources.catalog, &deployed.nfas, &cfg.kafka.group_id)
                .map_err(|e| e.context(format!("deployment {} cannot run with {}", d.id, path.display())))?;
            plans = expose(plans, &deployed.live_keys);
            avro = AvroIn::for_plans(&cfg, path, plans.values())?;
            set = deployed;
        }
        tracing::info!(deployment = %d.id, set = %set.hash(), "running the deployed pattern set");
        metrics.pattern_info.reset();
        metrics.build_info.reset();
        init_metrics(&metrics, &plans, cfg.outputs.timeouts_topic.is_some());
        deployment = Some(d);
    }
    let (library, follower) = (found.library, found.follower);

    // Topics: inputs must exist to size the changelog; outputs are created when missing, and
    // repartition topics with as many partitions as their stream's topic.
    let probe: BaseConsumer =
        kafka::create(&cfg, &client, rdkafka::consumer::DefaultConsumerContext, "metadata client")?;
    let topology = repartition::Topology::set_up(&cfg, &probe, &plans)?;
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
    // One partition: a replay reads it whole, in order.
    if let Some(t) = cfg.context_topic() {
        wanted.push((t, 1, false));
    }
    kafka::ensure_topics(&cfg, &wanted)?;
    let changelog_parts = kafka::partition_counts(&probe, &[changelog.as_str()])?[0]
        .ok_or_else(|| Error::failed(format!("the changelog topic `{changelog}` is not there after creating it")))?
        as i32;
    drop(probe);

    let opened = Instant::now();
    let store = Store::open(&base.join(&cfg.service.state_dir))?;
    tracing::info!(
        dir = %base.join(&cfg.service.state_dir).display(),
        bytes = store.size_bytes(),
        ms = opened.elapsed().as_millis() as u64,
        "state store opened"
    );
    let store = Arc::new(WriteBehind::new(store)?);

    let txn_id = format!("{}-{}", cfg.kafka.group_id, cfg.service.instance_id);
    let mut pc = client.clone();
    pc.set("transactional.id", &txn_id).set("enable.idempotence", "true").set("linger.ms", "5");
    let txn_context = TxnContext::new(Arc::default(), &changelog);
    let connection_lost = txn_context.connection_lost.clone();
    let producer: BaseProducer<TxnContext> = kafka::create(&cfg, &pc, txn_context, "producer")?;
    let producer_config = pc.clone();
    producer.init_transactions(TXN_TIMEOUT).map_err(|e| {
        Error::failed(format!("cannot initialise transactions as `{txn_id}`: {}", kafka::redact(&cfg, &e.to_string())))
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
    let epoch = Arc::new(AtomicU64::new(0));
    let threads = cfg
        .service
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
        .max(1);
    // Before the first record: they are read to their ends.
    let tables = tables::start(&cfg, &sources.config_path)?;
    let core = Worker {
        epoch: epoch.clone(),
        threads,
        producer: Arc::new(producer),
        store,
        plans,
        avro,
        op_config,
        parts: HashMap::new(),
        in_txn: false,
        begun: false,
        outbox: Vec::new(),
        pending: None,
        marks: HashMap::new(),
        distrusted: HashSet::new(),
        txn_started: Instant::now(),
        changelog,
        changelog_parts,
        alerts_topic: o.alerts_topic.clone(),
        shadow_alerts_topic: o.shadow_alerts_topic.clone(),
        late_topic: o.late_topic.clone(),
        dead_letter_topic: o.dead_letter_topic.clone(),
        pattern_sets_topic: o.pattern_sets_topic.clone(),
        context_topic: cfg.context_topic(),
        instance: cfg.service.instance_id.clone(),
        group: cfg.kafka.group_id.clone(),
        set,
        library,
        follower: Some(follower),
        deployment,
        repartition: topology,
        writers_seen: Vec::new(),
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
        aborts_in_a_row: 0,
        producer_config,
        failpoints: Failpoints::from_env()?,
        max_record: kafka::max_record_bytes(&cfg)?,
        alert_schemas: alert_schemas(&cfg)?,
        tables,
        cache_size: cfg.state.cache_size,
        connection_lost: connection_lost.clone(),
    };
    let shared = Arc::new(Shared {
        epoch,
        core: Mutex::new(core),
        assigned: Mutex::new(None),
        revoked_while_restoring: AtomicBool::new(false),
        connection_lost,
    });

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
    consumer.subscribe(&inputs).or_fail(Kind::Failed, "cannot subscribe to the input topics")?;
    drop(client);

    let cfg = Arc::new(cfg);
    let result = main_loop(&consumer, &shared, &health, interval, &cfg);
    // Leave cleanly whatever happened: commit what is done (unless the loop failed: then the
    // open transaction aborts), then leave the group so the partitions move at once.
    {
        let mut core = lock(&shared);
        match &result {
            Ok(()) => match core.commit(&consumer) {
                Ok(Ended::Aborted) => tracing::error!("the last transaction aborted: a restart does its records again"),
                Ok(_) => {}
                Err(e) => tracing::error!("the last commit failed: {e}"),
            },
            Err(e) => core.abort_open(e),
        }
        core.totals.log("stopped", core.parts.values().map(HashMap::len).sum());
    }
    consumer.unsubscribe();
    drop(consumer);
    result
}

/// With Avro alerts, registers the alert schema under both alerts topics' subjects
/// (`<topic>-value`): the ids to frame the alerts with.
fn alert_schemas(cfg: &Config) -> Result<Option<(u32, u32)>> {
    if cfg.outputs.alert_format != AlertFormat::Avro {
        return Ok(None);
    }
    let registry = kafka::registry(cfg)?;
    let o = &cfg.outputs;
    let live = alert_avro::register(&registry, &format!("{}-value", o.alerts_topic))?;
    let shadow = alert_avro::register(&registry, &format!("{}-value", o.shadow_alerts_topic))?;
    tracing::info!(live, shadow, "alerts are Avro: the alert schema is registered");
    Ok(Some((live, shadow)))
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
        lock(shared).follow(consumer)?;
        lock(shared).follow_tables()?;
        lock(shared).mark_idle(consumer);
        lock(shared).advance_idle(consumer)?;
        let wait = {
            let core = lock(shared);
            if let Some(f) = &core.fatal {
                return Err(f.clone());
            }
            let wait = if core.in_txn {
                interval.saturating_sub(core.txn_started.elapsed()).min(Duration::from_millis(100))
            } else {
                Duration::from_millis(100)
            };
            // A staged transaction's end is looked for at least this often.
            if core.pending.is_some() {
                wait.min(PENDING_CHECK)
            } else {
                wait
            }
        };
        match consumer.poll(wait) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                let msg = kafka::redact(cfg, &e.to_string());
                if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal)) {
                    return Err(Error::failed(format!("the consumer failed: {msg}")));
                }
                if e.rdkafka_error_code().is_some_and(kafka::is_connection_loss) {
                    shared.connection_lost.store(true, Ordering::SeqCst);
                }
                tracing::warn!("consumer: {msg}");
            }
            Some(Ok(msg)) => {
                // What the consumer holds already joins it, without waiting; each record is
                // tagged with the epoch it was polled in (a rebalance or a rewind starts another).
                let epoch = || shared.epoch.load(Ordering::Relaxed);
                let mut msgs = vec![(epoch(), msg)];
                while msgs.len() < MAX_BATCH {
                    match consumer.poll(Duration::ZERO) {
                        Some(Ok(m)) => msgs.push((epoch(), m)),
                        Some(Err(KafkaError::PartitionEOF(_))) => {}
                        Some(Err(e)) => {
                            if e.rdkafka_error_code().is_some_and(kafka::is_connection_loss) {
                                shared.connection_lost.store(true, Ordering::SeqCst);
                            }
                            tracing::warn!("consumer: {}", kafka::redact(cfg, &e.to_string()));
                            break;
                        }
                        None => break,
                    }
                }
                handle_assignment(consumer, shared)?;
                let mut core = lock(shared);
                // An error after the transaction began aborts it before it is returned.
                if let Err(e) = core.handle_batch(consumer, &msgs, health) {
                    core.recover(consumer, e)?;
                }
                core.gate_new_writers();
            }
        }
        let mut core = lock(shared);
        // A staged transaction that has ended lets the outbox out.
        match core.pump(consumer) {
            Ok(Ended::Aborted) => core.rewind(consumer)?,
            Ok(_) => {}
            Err(e) => core.recover(consumer, e)?,
        }
        if core.pending.is_none() {
            core.producer.poll(Duration::ZERO);
        }
        // Keys that changed stay in memory until they are committed: commit early rather than
        // let them grow past twice the cache.
        let due = core.in_txn && (core.txn_started.elapsed() >= interval || core.cached_keys() > 2 * core.cache_size);
        if due && core.commit_behind(consumer)? == Ended::Aborted {
            core.rewind(consumer)?;
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

fn lock(shared: &Shared) -> MutexGuard<'_, Worker> {
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
        shared.revoked_while_restoring.store(false, Ordering::Relaxed);
        let result = core.assign(consumer, &list, false);
        core.metrics.restore_in_progress.set(0);
        core.metrics.restore_duration.observe(started.elapsed().as_secs_f64());
        match result? {
            // A rebalance took the partitions while they were restored: the next assignment is
            // pending (or none comes); nothing was processed for these.
            Restored::Revoked => {
                tracing::info!("partitions revoked during their restore: the restore is abandoned");
                for (t, p) in &list {
                    if let Some(m) = core.parts.get_mut(t) {
                        m.remove(p);
                    }
                }
            }
            Restored::Done => {
                core.restart_activity(false);
                core.tables_after(Some(&list), false);
                core.record_assignment(consumer, &list)?;
                core.health.ready.store(true, Ordering::Relaxed);
                core.update_gauges(consumer);
            }
            // Nothing was processed for these partitions: the loop stops cleanly next turn.
            Restored::Interrupted => tracing::info!("shutdown requested during the state restore"),
        }
    }
    Ok(())
}

/// How a commit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub(super) enum Ended {
    /// No transaction was open.
    Idle,
    Committed,
    /// The transaction aborted: the caller rewinds ([`Worker::rewind`]) before reading on.
    Aborted,
}

/// The output topics, as the metrics' `output` label names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Output {
    Alerts,
    ShadowAlerts,
    Late,
    DeadLetter,
    Timeouts,
    Changelog,
    PatternSets,
    Repartition,
    Context,
}

impl Output {
    pub(super) const ALL: [Output; 9] = [
        Output::Alerts,
        Output::ShadowAlerts,
        Output::Late,
        Output::DeadLetter,
        Output::Timeouts,
        Output::Changelog,
        Output::PatternSets,
        Output::Repartition,
        Output::Context,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Output::Alerts => "alerts",
            Output::ShadowAlerts => "shadow_alerts",
            Output::Late => "late",
            Output::DeadLetter => "dead_letter",
            Output::Timeouts => "timeouts",
            Output::Changelog => "changelog",
            Output::PatternSets => "pattern_sets",
            Output::Repartition => "repartition",
            Output::Context => "context",
        }
    }
}

/// An output record waiting in the outbox: where it goes, its key, value and headers.
pub(super) struct Out {
    pub(super) to: Output,
    /// A repartition record's topic, partition and timestamp (the source record's).
    pub(super) at: Option<(String, i32, Option<i64>)>,
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Option<Vec<u8>>,
    pub(super) headers: Option<rdkafka::message::OwnedHeaders>,
}

impl Worker {
    /// After an error in the open transaction: the staged one ends first (it commits or
    /// aborts as it would have), then a new producer takes over and every partition rewinds,
    /// when the error was the producer's and a new one recovers from it; else the open
    /// transaction aborts and the error stops the service.
    fn recover(&mut self, consumer: &BaseConsumer<GroupContext>, e: Error) -> Result<()> {
        if let Err(f) = self.settle(consumer) {
            tracing::error!("{e}");
            self.abort_open(&f);
            return Err(f);
        }
        match self.recoverable_fatal() {
            Some(why) => {
                self.renew_producer(&why)?;
                self.rewind(consumer)
            }
            None => {
                self.abort_open(&e);
                Err(e)
            }
        }
    }

    /// The topic of an output (`None`: timeouts, when no topic is configured for them).
    fn topic_of(&self, out: Output) -> Option<&str> {
        Some(match out {
            Output::Alerts => &self.alerts_topic,
            Output::ShadowAlerts => &self.shadow_alerts_topic,
            Output::Late => &self.late_topic,
            Output::DeadLetter => &self.dead_letter_topic,
            Output::Timeouts => return self.timeouts_topic.as_deref(),
            Output::Changelog => &self.changelog,
            Output::PatternSets => &self.pattern_sets_topic,
            // Named by each record (`Out::at`).
            Output::Repartition => return None,
            Output::Context => return self.context_topic.as_deref(),
        })
    }
}

/// State shared between the loop and the rebalance callbacks.
struct Shared {
    /// Bumped by every rebalance and rewind: a record polled in an earlier epoch is not
    /// processed (the consumer reads it again from its new position).
    epoch: Arc<AtomicU64>,
    core: Mutex<Worker>,
    /// Partitions assigned by the last rebalance, waiting for their state.
    assigned: Mutex<Option<Vec<(String, i32)>>>,
    /// A revocation came while a restore polled the consumer (to stay in the group): the
    /// restore is abandoned and the next assignment taken instead.
    revoked_while_restoring: AtomicBool,
    /// Raised when a broker connection fails (the producer's or the consumer's): the open
    /// transaction does not commit (see `Worker::try_commit`).
    connection_lost: Arc<AtomicBool>,
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

/// The loop's state: the clients, the store, every assigned partition's engine state and the
/// open transaction's bookkeeping.
struct Worker {
    /// The epoch of polled records (see [`Shared::epoch`]).
    epoch: Arc<AtomicU64>,
    /// Threads that step partitions side by side.
    threads: usize,
    /// Shared with the committer thread of a staged transaction.
    producer: Arc<BaseProducer<TxnContext>>,
    /// The local state store; written after each commit, off the loop. Partitions read the keys
    /// they do not hold in memory from it.
    store: Arc<WriteBehind>,
    plans: BTreeMap<String, Arc<StreamPlan>>,
    avro: AvroIn,
    op_config: OpConfig,
    /// Assigned partitions' state, by topic and partition.
    parts: HashMap<String, HashMap<i32, Partition>>,
    /// Records were processed since the last transaction was staged: the open transaction.
    in_txn: bool,
    /// The producer's transaction for the open one has begun (it has not while a staged one
    /// commits: the open one's outputs wait in the outbox).
    begun: bool,
    /// Outputs of the open transaction not produced yet (see [`commit`]).
    outbox: Vec<Out>,
    /// The staged transaction, committing behind the loop (see [`commit`]).
    pending: Option<Pending>,
    /// What the broker must hold of the last commits (see [`Worker::lost_commits`]).
    marks: commit::Marks,
    /// Partitions restored after the broker lost committed transactions, until a commit of
    /// theirs: their group offsets may be ahead of everything the broker kept.
    distrusted: HashSet<(String, i32)>,
    /// When the open transaction took its first record.
    txn_started: Instant,
    changelog: String,
    changelog_parts: i32,
    alerts_topic: String,
    shadow_alerts_topic: String,
    late_topic: String,
    dead_letter_topic: String,
    pattern_sets_topic: String,
    /// Where wall-clock advances and reference table versions are recorded (`core::context`).
    context_topic: Option<String>,
    instance: String,
    /// The consumer group (`kafka.group_id`).
    group: String,
    /// The running pattern set.
    set: PatternSet,
    /// Every pattern version this instance ran or found in the pattern sets topic.
    library: Library,
    /// The pattern sets topic, followed for deployments.
    follower: Option<follow::Follower>,
    /// The deployment the running set came from (`None`: the pattern files).
    deployment: Option<Deployment>,
    /// Repartitioning (see `core::repartition`): the partition counts of the topics involved,
    /// and per source partition that forwards, when it last read a record.
    repartition: repartition::Topology,
    /// Writer schemas met, per stream, as field tables (the schema gate: `gate.rs`).
    writers_seen: Vec<(String, u32, Arc<dsl::StreamSchema>)>,
    timeouts_topic: Option<String>,
    min_ts: i64,
    max_ts: i64,
    health: Arc<Health>,
    totals: Totals,
    /// An error raised inside a rebalance callback, reported by the loop.
    fatal: Option<Error>,
    /// Client settings of the changelog reader.
    restore_config: rdkafka::ClientConfig,
    metrics: Arc<Metrics>,
    sources: Sources,
    /// What the open transaction did, for the metrics once it commits.
    batch: Batch,
    /// When the gauges were last set.
    gauges_at: Instant,
    /// Transactions aborted since the last commit.
    aborts_in_a_row: u32,
    /// The producer's settings, for a new one after a recoverable fatal error.
    producer_config: rdkafka::ClientConfig,
    failpoints: Failpoints,
    /// The largest record the producer may send (`message.max.bytes`).
    max_record: usize,
    /// With `outputs.alert_format = "avro"`: the alert schema's ids under the alerts and the
    /// shadow alerts topics' subjects.
    alert_schemas: Option<(u32, u32)>,
    /// The reference tables (`None`: none configured).
    tables: Option<tables::Tables>,
    /// Keys held in memory over all partitions (`state.cache_size`).
    cache_size: usize,
    /// A broker connection failed since the last rewind (see [`TxnContext`]).
    connection_lost: Arc<AtomicBool>,
}

/// Faults the failure-path tests inject, from `TRIPLINE_FAILPOINTS` (read at start;
/// comma-separated). Unset in production.
#[derive(Clone, Copy, Debug, Default)]
struct Failpoints {
    /// `kill-after-commit:N`: SIGKILL after the Nth transaction of the process commits, before
    /// the local store is written.
    kill_after_commit: Option<u64>,
    /// `kill-in-transaction:N`: SIGKILL once the Nth transaction of the process has produced its
    /// records (outputs, changelog, repartition records and markers), before it commits.
    kill_in_transaction: Option<u64>,
    /// `slow-restore:MS`: a changelog restore takes at least this long (20 ms per record read).
    slow_restore_ms: Option<u64>,
}

impl Failpoints {
    fn from_env() -> Result<Failpoints> {
        let mut f = Failpoints::default();
        let Ok(text) = std::env::var("TRIPLINE_FAILPOINTS") else { return Ok(f) };
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = || {
                Error::usage(format!("TRIPLINE_FAILPOINTS: `{item}` is not `kill-after-commit:N`, `kill-in-transaction:N` or `slow-restore:MS`"))
            };
            let (name, n) = item.split_once(':').ok_or_else(bad)?;
            let n: u64 = n.parse().map_err(|_| bad())?;
            match name {
                "kill-after-commit" => f.kill_after_commit = Some(n),
                "kill-in-transaction" => f.kill_in_transaction = Some(n),
                "slow-restore" => f.slow_restore_ms = Some(n),
                _ => return Err(bad()),
            }
        }
        if f.kill_after_commit.is_some() || f.kill_in_transaction.is_some() || f.slow_restore_ms.is_some() {
            tracing::warn!(?f, "failpoints set (a test)");
        }
        Ok(f)
    }
}

/// Ends this process with SIGKILL (a failpoint): no destructor, no flush, as a crash.
fn kill_self(why: &str) -> ! {
    tracing::warn!("{why}: SIGKILL");
    let _ = std::process::Command::new("kill").args(["-KILL", &std::process::id().to_string()]).status();
    // `kill` is not there: abort is as abrupt.
    std::process::abort()
}
