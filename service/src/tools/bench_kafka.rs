//! `tripline bench kafka`: the service end to end, against a broker and a schema registry
//! (`scripts/bench-kafka` starts fresh ones on loopback and stops them), with `tripline run`
//! (this binary) as child processes. Each part can be left out (`--only`); results go to stdout,
//! one line each, progress to stderr:
//!
//! - `raw`: the broker's own consume+produce rate with plain rdkafka: the payments read from
//!   every partition and produced again to the same partition of a copy topic (records/s).
//! - `service`: per commit interval, a fresh consumer group over the same payments (the four
//!   payment patterns the Kafka tests run): events/s from starting the process to every offset
//!   committed (start-up and joining the group included), and the alerts committed, which must
//!   be the same at every interval.
//! - `latency`: payments copied at a steady rate into an empty topic the service reads; per
//!   alert, from the produce acknowledgement of the match's last record to the alert being
//!   readable with read_committed (as `service/tests/kafka_throughput.rs`).
//! - `rebalance`: a second instance joins a group whose first instance holds 8 partitions (see
//!   [`rebalance`] for what is timed).
//! - `restore`: state built up to a size (partial matches that stay open), then restored once
//!   from the local store and once from the changelog (see [`restore`]).
//! - `keys`: state beyond memory: a million accounts (`--open-keys`) each with a partial match
//!   that stays open, through a cache of `--cache-size` keys (see [`keys`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::bench_env::{
    alerts_by_pattern, caught_up, dir_bytes, memory_kb, open_payments, partitions, payments, say, ConfigSpec, Env,
    Service, SvcConfig, OPEN_FILE, PAYMENT_PATTERNS, START,
};
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::kafka;
use crate::obs::out;

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Raw,
    Service,
    Latency,
    Rebalance,
    Restore,
    Keys,
}

/// What to run, and how big.
#[derive(Debug, Clone)]
pub struct Options {
    /// Generated configs, inputs, state directories and service logs go here (empty or new).
    pub work_dir: std::path::PathBuf,
    pub bootstrap: String,
    pub registry: String,
    pub parts: Vec<Part>,
    /// Payments of the raw and service parts.
    pub events: usize,
    /// Accounts they are spread over.
    pub keys: u64,
    /// Partitions of the payments topic.
    pub partitions: i32,
    /// Commit intervals of the service part, ms.
    pub intervals_ms: Vec<u64>,
    /// Offered load of the latency part, events/s.
    pub rate: u64,
    /// Payments of the latency part.
    pub latency_events: usize,
    /// Commit interval of the latency part, ms.
    pub latency_interval_ms: u64,
    /// Payments in the 8-partition topic before the second instance joins.
    pub rebalance_events: usize,
    /// State to build up for the restore part, MB (10^6 bytes).
    pub state_mb: u64,
    /// Accounts of the keys part.
    pub open_keys: u64,
    /// `state.cache_size` of the keys part.
    pub cache_size: usize,
}

/// The payments topic of the raw and service parts.
const PAYMENTS: &str = "payments";
/// Partitions of the rebalance part's topic.
const REBALANCE_PARTITIONS: i32 = 8;
/// Payments per account in the restore part's state.
const OPEN_PER_KEY: u64 = 8;

/// Runs the parts; false when something that must hold did not (alert counts that differ
/// across commit intervals).
pub fn run(o: &Options) -> Result<bool> {
    say(&format!("broker {}, registry {}, work directory {}", o.bootstrap, o.registry, o.work_dir.display()));
    let env = Env::new(&o.work_dir, &o.bootstrap, &o.registry)?;
    let has = |p: Part| o.parts.contains(&p);
    let files = PAYMENT_PATTERNS.map(|(f, _)| f);
    let base =
        env.config(ConfigSpec { topic: PAYMENTS, group: "bench", instance: "p", interval_ms: 100, patterns: &files })?;
    let cfg = env.load(&base)?;
    {
        // The broker answers, or the error says where it was looked for.
        let probe = env.consumer("bench-probe")?;
        kafka::partition_counts(&probe, &[PAYMENTS]).map_err(|e| {
            Error::usage(format!("no broker answers at {} ({e}): scripts/bench-kafka starts one", o.bootstrap))
        })?;
    }
    let mut ok = true;
    if has(Part::Raw) || has(Part::Service) {
        say(&format!(
            "producing {} payments over {} accounts to `{PAYMENTS}` ({} partitions)",
            o.events, o.keys, o.partitions
        ));
        let t = Instant::now();
        let n = env.produce(&base, "payments.jsonl", &payments(o.events, o.keys, 3, START, "P"), o.partitions)?;
        say(&format!("produced {n} records in {:.1} s", t.elapsed().as_secs_f64()));
    }
    let raw = if has(Part::Raw) {
        let (n, rate) = raw_rate(&env, &cfg, PAYMENTS)?;
        out(&format!("raw records={n} rate={rate:.0}/s\n"));
        Some(rate)
    } else {
        None
    };
    if has(Part::Service) {
        ok &= service(&env, o, raw)?;
    }
    if has(Part::Raw) || has(Part::Service) {
        // Each part leaves the broker as it found it (see `Env::delete_topics`).
        env.delete_topics(&[PAYMENTS.to_owned()]);
    }
    if has(Part::Latency) {
        latency(&env, o)?;
    }
    if has(Part::Rebalance) {
        rebalance(&env, o)?;
    }
    if has(Part::Restore) {
        restore(&env, o)?;
    }
    if has(Part::Keys) {
        keys(&env, o)?;
    }
    Ok(ok)
}

/// The broker alone: every record of `topic` consumed and produced again to the same partition
/// of `raw-copy`, with rdkafka (as `raw_rate` of the throughput test). Records and records/s.
fn raw_rate(env: &Env, cfg: &crate::core::config::Config, topic: &str) -> Result<(u64, f64)> {
    let c = env.consumer("bench-raw")?;
    let parts = partitions(&c, topic)?;
    kafka::ensure_topics(cfg, &[("raw-copy".to_owned(), parts, false)])?;
    let p: BaseProducer =
        env.client().set("linger.ms", "5").create().or_fail(Kind::Failed, "cannot create a Kafka producer")?;
    let mut tpl = TopicPartitionList::new();
    for i in 0..parts {
        tpl.add_partition_offset(topic, i, Offset::Beginning).or_fail(Kind::Failed, "assignment")?;
    }
    c.assign(&tpl).or_fail(Kind::Failed, "cannot read the payments")?;
    say("raw: consuming and producing the payments with rdkafka, no service");
    let t = Instant::now();
    let (mut n, mut eof, mut last) = (0u64, 0, Instant::now());
    while eof < parts {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                n += 1;
                last = Instant::now();
                let mut r = BaseRecord::<[u8], [u8]>::to("raw-copy")
                    .partition(m.partition())
                    .payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    r = r.key(k);
                }
                loop {
                    match p.send(r) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                            r = back;
                            p.poll(Duration::from_millis(5));
                        }
                        Err((e, _)) => return Err(Error::failed(format!("raw: cannot produce: {e}"))),
                    }
                }
                p.poll(Duration::ZERO);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => say(&format!("raw: {e}")),
            None => {}
        }
        if last.elapsed() > Duration::from_secs(60) {
            return Err(Error::failed(format!("raw: reading {topic} stalled after {n} records")));
        }
    }
    p.flush(Duration::from_secs(120)).or_fail(Kind::Failed, "raw: not every record was delivered")?;
    let secs = t.elapsed().as_secs_f64();
    say(&format!("raw: {n} records in {secs:.2} s"));
    env.delete_topics(&["raw-copy".to_owned()]);
    Ok((n, n as f64 / secs))
}

/// The service over the payments at each commit interval, each from a fresh group: the time
/// from starting the process to every partition's offset committed at the topic's end. False
/// when the alert counts differ.
fn service(env: &Env, o: &Options, raw: Option<f64>) -> Result<bool> {
    let ends = env.ends(PAYMENTS)?;
    let n: i64 = ends.iter().sum();
    let files = PAYMENT_PATTERNS.map(|(f, _)| f);
    let mut counts = Vec::new();
    for &ms in &o.intervals_ms {
        let group = format!("svc-{ms}ms");
        let cfg = env.config(ConfigSpec {
            topic: PAYMENTS,
            group: &group,
            instance: "a",
            interval_ms: ms,
            patterns: &files,
        })?;
        let checker = env.consumer(&group)?;
        say(&format!("service: commit interval {ms} ms, group {group}, {n} events"));
        let t = Instant::now();
        let mut svc = env.start(&cfg, &group)?;
        let limit = Duration::from_secs(300 + n as u64 / 200);
        let mut ready_at = None;
        while !caught_up(&checker, PAYMENTS, &ends) {
            svc.check_running()?;
            if ready_at.is_none() && svc.ready() {
                ready_at = Some(t.elapsed());
            }
            if t.elapsed() > limit {
                return Err(Error::failed(format!("service: group {group} did not catch up within {limit:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let secs = t.elapsed().as_secs_f64();
        svc.stop()?;
        let alerts = env.committed_records(&format!("{group}.alerts"))?;
        let eps = n as f64 / secs;
        let (raw_s, ratio) = match raw {
            Some(r) => (format!("{r:.0}"), format!("{:.2}", eps / r)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        out(&format!("interval={ms}ms raw={raw_s} service={eps:.0} ratio={ratio}\n"));
        say(&format!(
            "service: {ms} ms: {n} events in {secs:.2} s (ready after {:.2} s), {} alerts {:?}; {}",
            ready_at.map_or(f64::NAN, |d| d.as_secs_f64()),
            alerts.len(),
            alerts_by_pattern(&alerts),
            svc.log_lines("stopped").last().map_or("", |l| l.rsplit_once("INFO").map_or(l.as_str(), |(_, r)| r).trim())
        ));
        counts.push((ms, alerts.len()));
        env.delete_topics(&output_topics(&group));
    }
    let equal = counts.windows(2).all(|w| w[0].1 == w[1].1);
    match counts.first() {
        Some((_, c)) if equal => out(&format!("alerts={c} (the same at every commit interval)\n")),
        Some(_) => {
            let list: Vec<String> = counts.iter().map(|(ms, c)| format!("{ms}ms:{c}")).collect();
            out(&format!("alerts={} DIFFER across commit intervals\n", list.join(",")));
        }
        None => {}
    }
    Ok(equal)
}

/// The topics a service of `group` writes (its generated config names them after the group).
fn output_topics(group: &str) -> Vec<String> {
    ["changelog", "alerts", "alerts.shadow", "late", "dead-letter", "pattern-sets"]
        .iter()
        .map(|t| format!("{group}.{t}"))
        .collect()
}

/// Produce acknowledgement times by (partition, offset).
struct Acks(Arc<Mutex<HashMap<(i32, i64), Instant>>>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = r {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).insert((m.partition(), m.offset()), Instant::now());
        }
    }
}

/// Alert latency at a steady offered load. The payments (2,000 accounts, as the throughput
/// test) are first produced into a side topic, then copied record by record, same partition and
/// key, into an empty topic the service reads, at `rate` records/s; a reader assigned to the
/// alerts topic (read_committed) notes when each alert arrives. Per alert: from the produce
/// acknowledgement of the highest offset the match took to the alert's arrival. An alert the
/// watermark released (a later record) waits for that record too, as in production.
fn latency(env: &Env, o: &Options) -> Result<()> {
    let files = PAYMENT_PATTERNS.map(|(f, _)| f);
    let side =
        env.config(ConfigSpec { topic: "lat-side", group: "lat-side", instance: "a", interval_ms: 10, patterns: &[] })?;
    let later = payments(o.latency_events, 2_000, 9, START + 86_400_000 * 10, "L");
    env.produce(&side, "latency.jsonl", &later, o.partitions)?;
    let cfg = env.config(ConfigSpec {
        topic: "lat-in",
        group: "lat",
        instance: "a",
        interval_ms: o.latency_interval_ms,
        patterns: &files,
    })?;
    kafka::ensure_topics(&env.load(&cfg)?, &[("lat-in".to_owned(), o.partitions, false)])?;
    let mut svc = env.start(&cfg, "lat")?;
    svc.wait_ready(Duration::from_secs(120))?;

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = {
        let stop = stop.clone();
        let c = env.consumer("lat-read")?;
        std::thread::spawn(move || -> Result<Vec<(Vec<u8>, Instant)>> {
            let n = partitions(&c, "lat.alerts")?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..n {
                tpl.add_partition_offset("lat.alerts", p, Offset::Beginning).or_fail(Kind::Failed, "assignment")?;
            }
            c.assign(&tpl).or_fail(Kind::Failed, "cannot read the alerts")?;
            let mut seen = Vec::new();
            let mut eof = 0;
            while !stop.load(Ordering::Relaxed) {
                match c.poll(Duration::from_millis(5)) {
                    Some(Ok(m)) => seen.push((m.payload().unwrap_or_default().to_vec(), Instant::now())),
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        eof += 1;
                        if eof == n {
                            let _ = ready_tx.send(());
                        }
                    }
                    _ => {}
                }
            }
            Ok(seen)
        })
    };
    // The reader is at the end of every alerts partition before anything is produced.
    let _ = ready_rx.recv_timeout(Duration::from_secs(30));

    let acks = Arc::new(Mutex::new(HashMap::new()));
    let producer: BaseProducer<Acks> = env
        .client()
        .set("linger.ms", "0")
        .create_with_context(Acks(acks.clone()))
        .or_fail(Kind::Failed, "cannot create a Kafka producer")?;
    let src = env.consumer("lat-copy")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..o.partitions {
        tpl.add_partition_offset("lat-side", p, Offset::Beginning).or_fail(Kind::Failed, "assignment")?;
    }
    src.assign(&tpl).or_fail(Kind::Failed, "cannot read the side topic")?;
    say(&format!(
        "latency: {} payments at {} events/s, commit interval {} ms",
        o.latency_events, o.rate, o.latency_interval_ms
    ));
    let rate = o.rate as f64;
    let limit = Duration::from_secs_f64(o.latency_events as f64 / rate * 3.0 + 60.0);
    let t = Instant::now();
    let (mut sent, mut eof) = (0u64, 0);
    while eof < o.partitions && t.elapsed() < limit {
        match src.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                while (sent as f64) > t.elapsed().as_secs_f64() * rate {
                    producer.poll(Duration::from_millis(1));
                }
                let mut r = BaseRecord::to("lat-in").partition(m.partition()).payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    r = r.key(k);
                }
                let _ = producer.send::<[u8], [u8]>(r);
                sent += 1;
                producer.poll(Duration::ZERO);
            }
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
        svc.check_running()?;
    }
    let offered = sent as f64 / t.elapsed().as_secs_f64();
    producer.flush(Duration::from_secs(60)).or_fail(Kind::Failed, "latency: not every record was delivered")?;
    let ends = env.ends("lat-in")?;
    let checker = env.consumer("lat")?;
    let t = Instant::now();
    while !caught_up(&checker, "lat-in", &ends) {
        svc.check_running()?;
        if t.elapsed() > Duration::from_secs(300) {
            return Err(Error::failed("latency: the service did not catch up within 300 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().map_err(|_| Error::failed("latency: the alert reader panicked"))??;
    svc.stop()?;

    let acks = acks.lock().unwrap_or_else(|p| p.into_inner());
    let mut lat: Vec<f64> = Vec::new();
    for (text, at) in &seen {
        let a: serde_json::Value =
            serde_json::from_slice(text).or_fail(Kind::Failed, "latency: an alert is not JSON")?;
        let p = a["partition"].as_i64().unwrap_or(-1) as i32;
        let last = a["match"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(_, v)| v.as_array().into_iter().flatten())
            .filter_map(serde_json::Value::as_i64)
            .max();
        if let Some(acked) = last.and_then(|o| acks.get(&(p, o))) {
            lat.push(at.saturating_duration_since(*acked).as_secs_f64() * 1000.0);
        }
    }
    if lat.is_empty() {
        return Err(Error::failed(format!("latency: no alert came from the {sent} paced events")));
    }
    lat.sort_by(f64::total_cmp);
    let q = |f: f64| lat[((lat.len() - 1) as f64 * f).round() as usize];
    out(&format!(
        "latency rate={}/s interval={}ms p50={:.1}ms p99={:.1}ms max={:.1}ms alerts={}\n",
        o.rate,
        o.latency_interval_ms,
        q(0.5),
        q(0.99),
        lat[lat.len() - 1],
        lat.len()
    ));
    say(&format!("latency: {sent} events offered at {offered:.0}/s; {} alerts read", seen.len()));
    let mut topics = output_topics("lat");
    topics.extend(["lat-side".to_owned(), "lat-in".to_owned()]);
    env.delete_topics(&topics);
    Ok(())
}

/// The tripline_assigned_partitions gauge of an instance (0 when it does not answer).
fn assigned(svc: &Service) -> i64 {
    svc.metrics().and_then(|m| m.sum("tripline_assigned_partitions", &[])).unwrap_or(0.0) as i64
}

/// Rebalance time. Instance `a` holds all 8 partitions of a topic (with some payments in it,
/// so there is state to hand over) and has caught up. Timed: from starting instance `b`'s
/// process until both answer `/readyz` with 200 and their `tripline_assigned_partitions` gauges
/// are both above 0 and add up to 8. That is: `b` started, joined the group, the group
/// rebalanced (`a` committed and gave up its partitions, eager protocol), and each instance
/// restored the state of its new assignment (`b` from the changelog, `a` from its local store)
/// and recorded the pattern set's activation on it: the next poll of each consumes. Untimed,
/// afterwards: more payments are produced and both instances must commit them all (every
/// partition is consumed).
fn rebalance(env: &Env, o: &Options) -> Result<()> {
    let files = PAYMENT_PATTERNS.map(|(f, _)| f);
    let spec = |instance| ConfigSpec { topic: "reb-in", group: "reb", instance, interval_ms: 100, patterns: &files };
    let (a_cfg, b_cfg) = (env.config(spec("a"))?, env.config(spec("b"))?);
    say(&format!("rebalance: {} payments in {REBALANCE_PARTITIONS} partitions, instance a", o.rebalance_events));
    env.produce(&a_cfg, "rebalance.jsonl", &payments(o.rebalance_events, o.keys, 5, START, "B"), REBALANCE_PARTITIONS)?;
    let mut a = env.start(&a_cfg, "reb-a")?;
    a.wait_ready(Duration::from_secs(120))?;
    wait_caught_up(env, &mut [&mut a], "reb", "reb-in", Duration::from_secs(600))?;
    say("rebalance: instance a caught up; starting instance b");

    let t = Instant::now();
    let mut b = env.start(&b_cfg, "reb-b")?;
    loop {
        a.check_running()?;
        b.check_running()?;
        if a.ready() && b.ready() {
            let (na, nb) = (assigned(&a), assigned(&b));
            if na > 0 && nb > 0 && na + nb == i64::from(REBALANCE_PARTITIONS) {
                break;
            }
        }
        if t.elapsed() > Duration::from_secs(180) {
            return Err(Error::failed(format!(
                "rebalance: not settled within 180 s (a: ready {} with {} partitions, b: ready {} with {})",
                a.ready(),
                assigned(&a),
                b.ready(),
                assigned(&b)
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    out(&format!("rebalance partitions={REBALANCE_PARTITIONS} ms={ms:.0}\n"));
    for s in [&a, &b] {
        for l in s.log_lines("partitions assigned and restored") {
            say(&format!("rebalance: {}: {}", s.name, l.rsplit_once("INFO").map_or(l.as_str(), |(_, r)| r).trim()));
        }
    }
    let more = payments(2_000, o.keys, 6, START + 86_400_000, "B2");
    env.produce(&a_cfg, "rebalance-more.jsonl", &more, REBALANCE_PARTITIONS)?;
    let t = Instant::now();
    wait_caught_up(env, &mut [&mut a, &mut b], "reb", "reb-in", Duration::from_secs(120))?;
    say(&format!(
        "rebalance: both instances consume: 2000 more payments committed in {:.2} s (a holds {}, b holds {} partitions)",
        t.elapsed().as_secs_f64(),
        assigned(&a),
        assigned(&b)
    ));
    b.stop()?;
    a.stop()?;
    let mut topics = output_topics("reb");
    topics.push("reb-in".to_owned());
    env.delete_topics(&topics);
    Ok(())
}

/// Waits until `group` committed every partition of `topic` to its current end, while the
/// `running` services are alive.
fn wait_caught_up(env: &Env, running: &mut [&mut Service], group: &str, topic: &str, limit: Duration) -> Result<()> {
    let ends = env.ends(topic)?;
    let checker = env.consumer(group)?;
    let t = Instant::now();
    while !caught_up(&checker, topic, &ends) {
        for s in running.iter_mut() {
            s.check_running()?;
        }
        if t.elapsed() > limit {
            return Err(Error::failed(format!("group {group} did not catch up on {topic} within {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A gauge or counter of an instance.
fn metric(svc: &Service, name: &str, labels: &[&str]) -> f64 {
    svc.metrics().and_then(|m| m.sum(name, labels)).unwrap_or(0.0)
}

/// The `ms=` of the last log line with `message` (0 when there is none).
fn logged_ms(svc: &Service, message: &str) -> f64 {
    svc.log_lines(message)
        .last()
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("ms=")).and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Restore time per 100 MB of state. One instance of a group running [`OPEN_PATTERN`] (every
/// payment starts a partial match that stays open) is fed payments of new accounts, in rounds,
/// until its `tripline_state_bytes` gauge (RocksDB's estimate of the local store) reaches
/// `state_mb`; it stops cleanly. Then it is started again twice with the same instance id:
/// once with its state directory (restored from the local store), once without (restored from
/// the changelog, which it reads from the beginning, every version of every key). Timed: opening
/// the state store (its log line) plus the restore of the assignment
/// (`tripline_restore_duration_seconds`: reading the store or the changelog and rebuilding the
/// engine state of the 4 partitions). Not timed: process start, joining the group.
fn restore(env: &Env, o: &Options) -> Result<()> {
    let cfg = env.config(ConfigSpec {
        topic: "rst-in",
        group: "rst",
        instance: "r",
        interval_ms: 100,
        patterns: &[OPEN_FILE],
    })?;
    let target = o.state_mb * 1_000_000;
    let (mut keys, mut events) = (0u64, 0u64);
    let produce_round = |n_keys: u64, keys: &mut u64, events: &mut u64| -> Result<()> {
        let lines = open_payments(*keys, n_keys, OPEN_PER_KEY, START + 86_400_000 * 40 + *events as i64);
        env.produce(&cfg, &format!("restore-{keys}.jsonl"), &lines, o.partitions)?;
        *keys += n_keys;
        *events += n_keys * OPEN_PER_KEY;
        Ok(())
    };
    say(&format!(
        "restore: building up {} MB of state (accounts with {OPEN_PER_KEY} open partial matches each)",
        o.state_mb
    ));
    let t = Instant::now();
    let first = (target / 200 / OPEN_PER_KEY).clamp(100, 2_000);
    produce_round(first, &mut keys, &mut events)?;
    let mut svc = env.start(&cfg, "rst-build")?;
    svc.wait_ready(Duration::from_secs(120))?;
    let mut round = 0;
    let bytes = loop {
        round += 1;
        wait_caught_up(env, &mut [&mut svc], "rst", "rst-in", Duration::from_secs(1800))?;
        // The gauge is set after each commit and once a second.
        std::thread::sleep(Duration::from_millis(1500));
        let bytes = metric(&svc, "tripline_state_bytes", &[]) as u64;
        say(&format!("restore: {events} events over {keys} accounts: {:.1} MB of state", bytes as f64 / 1e6));
        if bytes >= target {
            break bytes;
        }
        if round >= 100 {
            return Err(Error::failed(format!(
                "restore: the state is {bytes} bytes after {round} rounds of payments, short of {target} \
                 (tripline_state_bytes does not grow?)"
            )));
        }
        let per_key = (bytes / keys).max(1);
        let need = ((target - bytes) / per_key + 1) * 21 / 20;
        produce_round(need.clamp(100, 25_000), &mut keys, &mut events)?;
    };
    svc.stop()?;
    say(&format!(
        "restore: built in {:.1} s; state directory {:.1} MB on disk",
        t.elapsed().as_secs_f64(),
        dir_bytes(&cfg.state_dir) as f64 / 1e6
    ));
    for source in ["store", "changelog"] {
        if source == "changelog" {
            std::fs::remove_dir_all(&cfg.state_dir)
                .or_fail_with(Kind::Failed, || format!("cannot remove {}", cfg.state_dir.display()))?;
        }
        restore_once(env, &cfg, source, bytes)?;
    }
    let mut topics = output_topics("rst");
    topics.push("rst-in".to_owned());
    env.delete_topics(&topics);
    Ok(())
}

fn restore_once(env: &Env, cfg: &SvcConfig, source: &str, bytes: u64) -> Result<()> {
    let mut svc = env.start(cfg, &format!("rst-{source}"))?;
    let to_ready = svc.wait_ready(Duration::from_secs(1800))?;
    let restore_s = metric(&svc, "tripline_restore_duration_seconds_sum", &[]);
    let restores = metric(&svc, "tripline_restore_duration_seconds_count", &[]);
    let from = metric(&svc, "tripline_restored_partitions_total", &[&format!("source=\"{source}\"")]);
    let records = metric(&svc, "tripline_restore_records_total", &[]);
    let open_ms = logged_ms(&svc, "state store opened");
    svc.stop()?;
    if from < 1.0 || restores != 1.0 {
        return Err(Error::failed(format!(
            "restore: expected one restore from the {source}; the metrics say {restores} restores, {from} partitions from the {source}"
        )));
    }
    let ms = open_ms + restore_s * 1000.0;
    out(&format!(
        "restore source={source} bytes={bytes} ms={ms:.0} ms_per_100MB={:.0}\n",
        ms * 1e8 / bytes.max(1) as f64
    ));
    say(&format!(
        "restore: {source}: store opened in {open_ms:.0} ms, {from} partitions restored in {:.0} ms ({records} changelog records read); {:.2} s from the process's start to ready",
        restore_s * 1000.0,
        to_ready.as_secs_f64()
    ));
    Ok(())
}

/// State beyond memory: `open_keys` accounts, one payment each, each payment a partial match of
/// [`OPEN_PATTERN`] that stays open (30 days), so every account holds state to the end; one
/// instance with `state.cache_size = cache_size`. Printed: events/s from the process's start to
/// every offset committed, the process's peak resident memory, the keys in memory (most seen)
/// against the keys holding state, the state's size on disk, the cache's hit rate; then the
/// instance restarted on its store: time to ready (the store is opened, no key is read).
fn keys(env: &Env, o: &Options) -> Result<()> {
    let cfg = env.config(ConfigSpec {
        topic: "keys-in",
        group: "keys",
        instance: "k",
        interval_ms: 100,
        patterns: &[OPEN_FILE],
    })?;
    let text = std::fs::read_to_string(&cfg.path).or_fail(Kind::Failed, "reading the generated config")?;
    std::fs::write(&cfg.path, format!("{text}\n[state]\ncache_size = {}\n", o.cache_size))
        .or_fail(Kind::Failed, "writing the generated config")?;
    say(&format!("keys: producing {} payments of as many accounts", o.open_keys));
    let t = Instant::now();
    const ROUND: u64 = 200_000;
    let mut first = 0;
    while first < o.open_keys {
        let n = ROUND.min(o.open_keys - first);
        env.produce(
            &cfg,
            &format!("keys-{first}.jsonl"),
            &open_payments(first, n, 1, START + first as i64),
            o.partitions,
        )?;
        first += n;
    }
    say(&format!("keys: produced in {:.1} s", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let mut svc = env.start(&cfg, "keys")?;
    let pid = svc.pid().unwrap_or(0);
    let (mut most_cached, mut peak_kb) = (0.0f64, 0u64);
    let mut last_say = Instant::now();
    // Reads the group's committed offsets; never joins it.
    let consumer = env.consumer("keys")?;
    let ends = env.ends("keys-in")?;
    loop {
        svc.check_running()?;
        if let Some(m) = svc.metrics() {
            most_cached = most_cached.max(m.sum("tripline_state_cached_keys", &[]).unwrap_or(0.0));
        }
        peak_kb = peak_kb.max(memory_kb(pid, "VmHWM"));
        if caught_up(&consumer, "keys-in", &ends) {
            break;
        }
        if last_say.elapsed() >= Duration::from_secs(10) {
            last_say = Instant::now();
            say(&format!(
                "keys: {:.0} s, {most_cached} keys in memory at most, {} MB resident",
                t.elapsed().as_secs_f64(),
                memory_kb(pid, "VmRSS") / 1024
            ));
        }
        if t.elapsed() > Duration::from_secs(3600) {
            return Err(Error::failed("keys: the service did not catch up within an hour"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(1500));
    let active = metric(&svc, "tripline_active_keys", &[]);
    let disk = metric(&svc, "tripline_state_bytes", &[]);
    let memory = metric(&svc, "tripline_state_memory_bytes", &[]);
    let hits = metric(&svc, "tripline_state_cache_lookups_total", &["result=\"hit\""]);
    let misses = metric(&svc, "tripline_state_cache_lookups_total", &["result=\"miss\""]);
    peak_kb = peak_kb.max(memory_kb(pid, "VmHWM"));
    svc.stop()?;
    out(&format!(
        "keys keys={active:.0} cache={} most_in_memory={most_cached:.0} events_per_s={:.0} rss_peak_mb={:.0} \
         state_disk_mb={:.0} cache_memory_mb={:.1} hit_rate={:.3}\n",
        o.cache_size,
        o.open_keys as f64 / secs,
        peak_kb as f64 / 1024.0,
        disk / 1e6,
        memory / 1e6,
        hits / (hits + misses).max(1.0)
    ));
    let mut svc = env.start(&cfg, "keys-again")?;
    let ready = svc.wait_ready(Duration::from_secs(1800))?;
    let restore_s = metric(&svc, "tripline_restore_duration_seconds_sum", &[]);
    svc.stop()?;
    out(&format!(
        "keys restart: ready in {:.2} s (restore of the assignment {:.0} ms, from the store)\n",
        ready.as_secs_f64(),
        restore_s * 1000.0
    ));
    let mut topics = output_topics("keys");
    topics.push("keys-in".to_owned());
    env.delete_topics(&topics);
    Ok(())
}
