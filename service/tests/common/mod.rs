//! Shared by the Kafka tests: a broker and a schema registry started by the project's own
//! `scripts/dev-up` (or an external cluster given by `TRIPLINE_TEST_KAFKA` and
//! `TRIPLINE_TEST_REGISTRY`), the `tripline` binary as a child process, a deterministic event
//! generator, and reading what the service committed.
#![allow(dead_code, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("service/ is in the repository").to_owned()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tripline")
}

/// A broker and a registry for one test; stopped when dropped.
pub struct DevEnv {
    pub dir: tempfile::TempDir,
    pub bootstrap: String,
    pub registry: String,
    /// Started here (else external: never stopped or restarted).
    local: bool,
}

impl DevEnv {
    pub fn start() -> DevEnv {
        let dir = tempfile::tempdir().expect("temp dir");
        if let (Ok(b), Ok(r)) = (std::env::var("TRIPLINE_TEST_KAFKA"), std::env::var("TRIPLINE_TEST_REGISTRY")) {
            return DevEnv { dir, bootstrap: b, registry: r, local: false };
        }
        let data = dir.path().join("infra");
        let out = Command::new(root().join("scripts/dev-up"))
            .arg("--data-dir")
            .arg(&data)
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/dev-up runs");
        assert!(out.status.success(), "scripts/dev-up failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .unwrap_or_else(|| panic!("dev-up did not print {name}: {text}"))
        };
        DevEnv { bootstrap: get("TRIPLINE_KAFKA_BOOTSTRAP"), registry: get("TRIPLINE_REGISTRY_URL"), dir, local: true }
    }

    /// Whether the broker can be restarted by the test (only a local one).
    pub fn can_restart_broker(&self) -> bool {
        self.local
    }

    pub fn restart_broker(&self) {
        let status = Command::new(root().join("scripts/dev-restart-broker"))
            .arg("--data-dir")
            .arg(self.dir.path().join("infra"))
            .stdout(Stdio::null())
            .status()
            .expect("scripts/dev-restart-broker runs");
        assert!(status.success(), "broker restart failed");
    }

    /// A `tripline` command with this environment's addresses.
    pub fn tripline(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("TRIPLINE_KAFKA_BOOTSTRAP", &self.bootstrap)
            .env("TRIPLINE_REGISTRY_URL", &self.registry)
            .env("RUST_LOG", "info,librdkafka=warn")
            .current_dir(self.dir.path());
        c
    }

    /// Runs a tool command to completion; its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.tripline().args(args).output().expect("tripline runs");
        assert!(
            out.status.success(),
            "tripline {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn consumer(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .expect("consumer")
    }

    /// Whether `group` has committed every partition of `topic` to its end.
    pub fn caught_up(&self, group: &str, topic: &str) -> bool {
        let c = self.consumer(group);
        let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(10)) else { return false };
        let Some(t) = md.topics().first() else { return false };
        let mut tpl = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for p in t.partitions() {
            let Ok((_, hi)) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10)) else { return false };
            ends.insert(p.id(), hi);
            tpl.add_partition(topic, p.id());
        }
        let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(10)) else { return false };
        ends.iter().all(|(p, hi)| {
            *hi == 0
                || matches!(committed.find_partition(topic, *p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *hi)
        })
    }

    /// Whether `group` has committed every partition of `topic`, a topic written in transactions
    /// (a repartition topic), past its last committed record: read_committed from each
    /// partition's committed offset, nothing is left. (Its end is no measure: transaction
    /// markers and the records of aborted transactions take offsets too.)
    pub fn caught_up_transactional(&self, group: &str, topic: &str) -> bool {
        let c = self.consumer(group);
        let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(10)) else { return false };
        let Some(t) = md.topics().first() else { return false };
        if t.partitions().is_empty() {
            return false;
        }
        let mut tpl = TopicPartitionList::new();
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
        let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(10)) else { return false };
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("{group}.check"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .expect("reader");
        let mut from = TopicPartitionList::new();
        for p in t.partitions() {
            let at = match committed.find_partition(topic, p.id()).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            if from.add_partition_offset(topic, p.id(), at).is_err() {
                return false;
            }
        }
        if reader.assign(&from).is_err() {
            return false;
        }
        let mut at_end = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while at_end.len() < t.partitions().len() && Instant::now() < deadline {
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(_)) => return false,
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                _ => {}
            }
        }
        at_end.len() == t.partitions().len()
    }

    pub fn wait_caught_up(&self, group: &str, topic: &str, limit: Duration) {
        let start = Instant::now();
        while !self.caught_up(group, topic) {
            assert!(start.elapsed() < limit, "group {group} did not catch up on {topic} within {limit:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The committed records of a topic (values), via `tripline tail`.
    pub fn committed(&self, config: &Path, topic: &str) -> Vec<String> {
        let out = self.run_ok(&["tail", "--config", &config.display().to_string(), "--topic", topic, "--idle", "3"]);
        out.lines().map(str::to_owned).collect()
    }
}

impl Drop for DevEnv {
    fn drop(&mut self) {
        if self.local {
            let _ = Command::new(root().join("scripts/dev-down"))
                .arg("--data-dir")
                .arg(self.dir.path().join("infra"))
                .stdout(Stdio::null())
                .status();
        }
        // A failed test's files (logs, configs, the broker's data) are kept for a look when
        // TRIPLINE_KEEP_FAILED is set.
        if std::thread::panicking() && std::env::var_os("TRIPLINE_KEEP_FAILED").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("TRIPLINE_KEEP_FAILED: the failed test's files are kept in {}", dir.keep().display());
        }
    }
}

/// A `tripline run` child process; killed when dropped.
pub struct Service {
    pub child: Child,
    pub name: String,
}

impl Service {
    pub fn start(env: &DevEnv, config: &Path, name: &str) -> Service {
        Service::start_with(env, config, name, &[])
    }

    /// Starts the service with extra environment variables (failpoints).
    pub fn start_with(env: &DevEnv, config: &Path, name: &str, vars: &[(&str, &str)]) -> Service {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.dir.path().join(format!("{name}.log")))
            .expect("log file");
        let child = env
            .tripline()
            .args(["run", "--config"])
            .arg(config)
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tripline run starts");
        Service { child, name: name.to_owned() }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (within 60 s).
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                self.kill9();
                panic!("{} did not stop within 60 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The tail of a service's log, for failure messages.
pub fn log_tail(env: &DevEnv, name: &str) -> String {
    let text = std::fs::read_to_string(env.dir.path().join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The status code of `GET path` on the service's HTTP address from `config` (None: no answer).
pub fn http_status(config: &Path, path: &str) -> Option<u16> {
    http_get(config, path)?.split_whitespace().nth(1)?.parse().ok()
}

/// The whole reply (status line, headers, body) to `GET path` on the service's HTTP address
/// from `config` (None: no answer).
pub fn http_get(config: &Path, path: &str) -> Option<String> {
    use std::io::{Read, Write as _};
    let text = std::fs::read_to_string(config).ok()?;
    let addr = text.lines().find_map(|l| l.strip_prefix("http_addr = "))?.trim_matches('"').to_owned();
    let mut s = std::net::TcpStream::connect(&addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    Some(reply)
}

/// Waits until `/readyz` answers 200.
pub fn wait_ready(config: &Path, limit: Duration) {
    let start = Instant::now();
    while http_status(config, "/readyz") != Some(200) {
        assert!(start.elapsed() < limit, "not ready within {limit:?} (last: {:?})", http_status(config, "/readyz"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Writes a service config for the payments stream and the library's payment patterns.
pub fn write_config(dir: &Path, group: &str, instance: &str, interval: &str, extra: &str) -> PathBuf {
    let root = root();
    let patterns: Vec<String> = PAYMENT_PATTERNS
        .iter()
        .map(|p| format!("{:?}", root.join(format!("patterns/{p}.tl")).display().to_string()))
        .collect();
    let text = format!(
        r#"[streams.payments]
topic = "payments"
schema = {schema:?}
timestamp_field = "event_time"
max_out_of_orderness = "5s"
key = "account_id"

[engine]
max_partial_matches_per_key = 10000

[kafka]
group_id = "{group}"

[outputs]
alerts_topic = "{group}.alerts"
late_topic = "{group}.late"
dead_letter_topic = "{group}.dead-letter"

[service]
patterns = [{patterns}]
state_dir = "state-{group}-{instance}"
instance_id = "{instance}"
commit_interval = "{interval}"
http_addr = "127.0.0.1:{port}"
{extra}
"#,
        schema = root.join("testdata/schemas/payments.avsc").display().to_string(),
        patterns = patterns.join(", "),
        port = free_port(),
    );
    let path = dir.join(format!("{group}-{instance}.toml"));
    std::fs::write(&path, text).expect("config written");
    path
}

/// The deterministic generator of `tripline bench kafka`, shared so the tests and the benchmark
/// produce the same payments.
#[allow(unused_imports)]
pub use tripline_service::tools::bench_env::Rng;

/// `n` payments over `keys` accounts as JSON lines, in event-time order with jitter below the
/// stream's 5 s out-of-orderness (so none is late), shaped so the payment patterns alert.
pub fn payments(n: usize, keys: u64, seed: u64) -> String {
    payments_from(n, keys, seed, START, "P")
}

/// 2026-01-01T00:00:00Z.
pub const START: i64 = 1_767_225_600_000;

/// As [`payments`], from `start` (ms), with payment ids `<prefix>-<n>` (the benchmark's generator).
pub fn payments_from(n: usize, keys: u64, seed: u64, start: i64, prefix: &str) -> String {
    tripline_service::tools::bench_env::payments(n, keys, seed, start, prefix)
}

/// `tripline export` of the payments stream, then `tripline replay --open-end` over it with the
/// payment patterns: the alert lines. `ok_exit`: the exit status replay must end with.
pub fn export_and_replay(env: &DevEnv, config: &Path, ok_exit: i32) -> Vec<String> {
    let config = config.display().to_string();
    env.run_ok(&["export", "--config", &config, "--stream", "payments", "--output", "export.jsonl"]);
    let mut args: Vec<String> = vec!["replay".into(), "--config".into(), config, "--open-end".into()];
    for p in PAYMENT_PATTERNS {
        args.push("--patterns".into());
        args.push(root().join(format!("patterns/{p}.tl")).display().to_string());
    }
    args.extend(["--input", "export.jsonl", "--output", "replay.jsonl"].map(String::from));
    let out = env.tripline().args(&args).output().expect("replay runs");
    assert_eq!(out.status.code(), Some(ok_exit), "replay: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(env.dir.path().join("replay.jsonl"))
        .expect("replay output")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The library patterns over payments, which the tests run.
pub const PAYMENT_PATTERNS: [&str; 4] = ["structuring", "rapid_movement", "mule_fan_in", "mule_fan_out"];

/// The payment patterns with a changed structuring (band 8,500..10,000, version 2) written to
/// `dir`: the files of that set.
#[allow(dead_code)] // not every test binary changes a pattern
pub fn with_changed_structuring(dir: &Path) -> Vec<String> {
    let changed = dir.join("structuring.tl");
    let text = std::fs::read_to_string(root().join("patterns/structuring.tl")).expect("pattern");
    std::fs::write(&changed, text.replace("amount >= 8000", "amount >= 8500").replacen("version 1", "version 2", 1))
        .expect("changed pattern");
    let mut files: Vec<String> = PAYMENT_PATTERNS
        .iter()
        .filter(|p| **p != "structuring")
        .map(|p| root().join(format!("patterns/{p}.tl")).display().to_string())
        .collect();
    files.push(changed.display().to_string());
    files
}

/// The fields of one payment (account ACC-1, 10 EUR by card) at `ts`, as an Avro record's fields
/// in the payments schema's order.
pub fn payment_fields(payment_id: &str, ts: i64) -> Vec<(String, apache_avro::types::Value)> {
    use apache_avro::types::Value as Avro;
    let null = || Avro::Union(0, Box::new(Avro::Null));
    vec![
        ("payment_id", Avro::String(payment_id.into())),
        ("account_id", Avro::String("ACC-1".into())),
        ("customer_id", Avro::String("C-1".into())),
        ("counterparty_account_id", Avro::String("CP-1".into())),
        ("counterparty_name", null()),
        ("counterparty_country", null()),
        ("direction", Avro::Enum(0, "IN".into())),
        ("amount", Avro::Double(10.0)),
        ("currency", Avro::String("EUR".into())),
        ("channel", Avro::Enum(0, "CARD".into())),
        ("country", Avro::String("DE".into())),
        ("branch_id", null()),
        ("reference", null()),
        ("event_time", Avro::TimestampMillis(ts)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A value in the Confluent wire format: magic byte, schema id, Avro datum.
pub fn framed(id: u32, schema: &apache_avro::Schema, value: apache_avro::types::Value) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend(
        apache_avro::writer::datum::GenericDatumWriter::builder(schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .expect("encodes"),
    );
    v
}

/// Alert lines by id; panics on a duplicate id.
pub fn by_id(lines: &[String], what: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for l in lines {
        let j: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {l}"));
        let id = j["alert_id"].as_str().unwrap_or_else(|| panic!("{what}: no alert_id: {l}")).to_owned();
        if let Some(prev) = m.insert(id.clone(), l.clone()) {
            panic!("{what}: alert {id} committed twice:\n{prev}\n{l}");
        }
    }
    m
}

/// Compares two alert sets, describing the first differences.
pub fn assert_same(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, what: &str) {
    let only_a: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).take(3).collect();
    let only_b: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).take(3).collect();
    let differ: Vec<&String> = a.keys().filter(|k| b.get(*k).is_some_and(|v| v != &a[*k])).take(3).collect();
    assert!(
        only_a.is_empty() && only_b.is_empty() && differ.is_empty(),
        "{what}: {} vs {} alerts; only left: {:?}; only right: {:?}; different bytes: {:?}",
        a.len(),
        b.len(),
        only_a.iter().map(|k| &a[*k]).collect::<Vec<_>>(),
        only_b.iter().map(|k| &b[*k]).collect::<Vec<_>>(),
        differ.iter().map(|k| (&a[*k], &b[*k])).collect::<Vec<_>>()
    );
}

/// Every committed record of `topic` (read_committed): its headers and its value.
pub fn records(env: &DevEnv, topic: &str) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.bootstrap)
        .set("group.id", "bad-input-reader")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    let parts = md.topics()[0].partitions().len();
    for p in 0..parts as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut eof = 0;
    let start = Instant::now();
    while eof < parts && start.elapsed() < Duration::from_secs(30) {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let mut h = BTreeMap::new();
                if let Some(hs) = m.headers() {
                    for x in hs.iter() {
                        h.insert(x.key.to_owned(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned());
                    }
                }
                out.push((h, m.payload().unwrap_or_default().to_vec()));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => eof += 1,
            _ => {}
        }
    }
    out
}

/// The partitions of `topic` where a read_committed reader stops short of the end, as
/// `partition: last stable offset < end`: an open transaction holds them.
pub fn held_by_open_transactions(env: &DevEnv, topic: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.bootstrap)
        .set("group.id", "open-transactions-probe")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut stops = BTreeMap::new();
    let start = Instant::now();
    while stops.len() < parts.len() && start.elapsed() < Duration::from_secs(30) {
        if let Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) = c.poll(Duration::from_millis(200)) {
            let at = c.position().expect("position").find_partition(topic, p).map(|e| e.offset());
            if let Some(Offset::Offset(o)) = at {
                stops.insert(p, o);
            }
        }
    }
    let mut held = Vec::new();
    for p in parts {
        let (_, hi) = c.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        match stops.get(&p) {
            Some(o) if *o >= hi => {}
            Some(o) => held.push(format!("{topic}/{p}: {o} < {hi}")),
            None => held.push(format!("{topic}/{p}: no end reached (< {hi})")),
        }
    }
    held
}

/// The offsets `group` committed on `topic`, summed over its partitions.
pub fn committed_total(env: &DevEnv, group: &str, topic: &str) -> i64 {
    let c = env.consumer(group);
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}
