//! End-to-end throughput and alert latency, measured (not asserted beyond sanity) and printed:
//! `cargo test -p tripline-service --test kafka_throughput -- --nocapture`.
//!
//! - the broker's own rate: consume N records and produce them again, with rdkafka, no service;
//! - the service: N Avro payments already in the topic, from start to every offset committed,
//!   at commit intervals of 1, 10 and 100 ms;
//! - alert latency: payments produced at a steady rate while the service runs; per alert, from
//!   the produce acknowledgement of the match's last record to the alert being readable
//!   (read_committed).

#![allow(clippy::print_stderr)] // the figures are the output

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{log_tail, write_config, DevEnv, Service};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

const N: usize = 100_000;

fn raw_rate(env: &DevEnv, topic: &str) -> f64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.bootstrap)
        .set("group.id", "raw")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let p: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &env.bootstrap).set("linger.ms", "5").create().expect("producer");
    let parts = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("md").topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for i in 0..parts as i32 {
        tpl.add_partition_offset(topic, i, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let t = Instant::now();
    let (mut n, mut eof) = (0, 0);
    while eof < parts {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                n += 1;
                let mut r = BaseRecord::<[u8], [u8]>::to("raw-copy").payload(m.payload().unwrap_or_default());
                loop {
                    match p.send(r) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            r = back;
                            p.poll(Duration::from_millis(5));
                        }
                    }
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    p.flush(Duration::from_secs(60)).expect("flushed");
    n as f64 / t.elapsed().as_secs_f64()
}

struct Acks(Arc<Mutex<HashMap<(i32, i64), Instant>>>);
impl ClientContext for Acks {}
impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Ok(m) = r {
            self.0.lock().expect("lock").insert((m.partition(), m.offset()), Instant::now());
        }
    }
}

#[test]
fn throughput_and_latency() {
    let env = DevEnv::start();
    let dir = env.dir.path().to_owned();
    std::fs::write(dir.join("payments.jsonl"), common::payments(N, 10_000, 3)).expect("written");
    let base = write_config(&dir, "tp", "x", "100ms", "");
    env.run_ok(&["produce", "--config", &base.display().to_string(), "--input", "payments.jsonl", "--partitions", "4"]);
    let raw = raw_rate(&env, "payments");
    eprintln!("broker raw consume+produce: {raw:.0} records/s ({N} records)");

    let mut alerts = None;
    for interval in ["1ms", "10ms", "100ms"] {
        let group = format!("tp{}", interval.trim_end_matches("ms"));
        let cfg = write_config(&dir, &group, "a", interval, "");
        let t = Instant::now();
        let mut svc = Service::start(&env, &cfg, &group);
        env.wait_caught_up(&group, "payments", Duration::from_secs(900));
        let secs = t.elapsed().as_secs_f64();
        assert!(svc.stop().success(), "{}", log_tail(&env, &group));
        let n = env.committed(&cfg, &format!("{group}.alerts")).len();
        eprintln!(
            "commit interval {interval}: {:.0} events/s end to end ({N} events, {n} alerts, {secs:.1} s incl. start-up; {:.2} of the broker's raw rate)",
            N as f64 / secs,
            N as f64 / secs / raw
        );
        assert!(alerts.is_none_or(|a| a == n), "every interval gives the same alerts");
        alerts = Some(n);
    }

    // Latency: a steady stream while the service runs (after it caught up with the backlog).
    let later = common::payments_from(20_000, 2_000, 9, common::START + 86_400_000 * 10, "L");
    std::fs::write(dir.join("later.jsonl"), &later).expect("written");
    // Encode them through the CLI into a side topic; they are copied to the input at a steady pace.
    let side = write_config(&dir, "side", "a", "10ms", "");
    let side_text =
        std::fs::read_to_string(&side).expect("cfg").replace("topic = \"payments\"", "topic = \"payments-side\"");
    std::fs::write(&side, side_text).expect("cfg");
    env.run_ok(&["produce", "--config", &side.display().to_string(), "--input", "later.jsonl", "--partitions", "4"]);

    let cfg = write_config(&dir, "lat", "a", "10ms", "");
    let mut svc = Service::start(&env, &cfg, "lat");
    env.wait_caught_up("lat", "payments", Duration::from_secs(300));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let reader = {
        let (stop, seen, bootstrap) = (stop.clone(), seen.clone(), env.bootstrap.clone());
        std::thread::spawn(move || {
            let rd: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "lat-read")
                .set("auto.offset.reset", "latest")
                .set("isolation.level", "read_committed")
                .create()
                .expect("consumer");
            rd.subscribe(&["lat.alerts"]).expect("subscribe");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(m)) = rd.poll(Duration::from_millis(5)) {
                    let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                    seen.lock().expect("lock").push((text, Instant::now()));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(3)); // the reader joins its group
    let acks = Arc::new(Mutex::new(HashMap::new()));
    let producer: BaseProducer<Acks> = ClientConfig::new()
        .set("bootstrap.servers", &env.bootstrap)
        .set("linger.ms", "0")
        .create_with_context(Acks(acks.clone()))
        .expect("producer");
    let src: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.bootstrap)
        .set("group.id", "lat-copy")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset("payments-side", p, Offset::Beginning).expect("tpl");
    }
    src.assign(&tpl).expect("assign");
    let rate = 2_000.0;
    let t = Instant::now();
    let (mut sent, mut eof) = (0u64, 0);
    while eof < 4 && t.elapsed() < Duration::from_secs(120) {
        match src.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                while (sent as f64) > t.elapsed().as_secs_f64() * rate {
                    producer.poll(Duration::from_millis(1));
                }
                // Same partition as in the side topic: same keys, same partitioning.
                let mut r =
                    BaseRecord::to("payments").partition(m.partition()).payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    r = r.key(k);
                }
                let _ = producer.send::<[u8], [u8]>(r);
                sent += 1;
                producer.poll(Duration::ZERO);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flushed");
    env.wait_caught_up("lat", "payments", Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().expect("reader");
    assert!(svc.stop().success(), "{}", log_tail(&env, "lat"));
    let acks = acks.lock().expect("lock");
    let mut lat: Vec<f64> = Vec::new();
    for (text, at) in seen.lock().expect("lock").iter() {
        let a: serde_json::Value = serde_json::from_str(text).expect("an alert");
        let p = a["partition"].as_i64().unwrap_or(-1) as i32;
        let last = a["match"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(_, v)| v.as_array().into_iter().flatten())
            .filter_map(|o| o.as_i64())
            .max();
        if let Some(acked) = last.and_then(|o| acks.get(&(p, o))) {
            lat.push(at.saturating_duration_since(*acked).as_secs_f64() * 1000.0);
        }
    }
    lat.sort_by(f64::total_cmp);
    assert!(!lat.is_empty(), "alerts should come from the paced events");
    let q = |f: f64| lat[((lat.len() - 1) as f64 * f).round() as usize];
    eprintln!(
        "alert latency at {rate} events/s, commit interval 10ms: {} alerts, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({sent} events)",
        lat.len(),
        q(0.5),
        q(0.99),
        lat[lat.len() - 1]
    );
}
