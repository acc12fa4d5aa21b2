//! The harness of `tripline bench kafka` ([`super::bench_kafka`]): a work directory with the
//! payments schema and patterns, generated configs, `tripline run` instances as child processes
//! (this same binary) with their `/readyz` and `/metrics`, the payment generator, and the few
//! Kafka questions the benchmark asks (partition ends, a group's committed offsets, counting a
//! topic's committed records).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::core::config::{Config, ENV_OVERRIDES};
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::kafka::{self, REQUEST_TIMEOUT};
use crate::obs::err;

const SCHEMA: &str = include_str!("../../../testdata/schemas/payments.avsc");

/// The library's payment patterns, as the Kafka tests run them: their files in the work
/// directory and their text.
pub const PAYMENT_PATTERNS: [(&str, &str); 4] = [
    ("patterns/structuring.tl", include_str!("../../../patterns/structuring.tl")),
    ("patterns/rapid_movement.tl", include_str!("../../../patterns/rapid_movement.tl")),
    ("patterns/mule_fan_in.tl", include_str!("../../../patterns/mule_fan_in.tl")),
    ("patterns/mule_fan_out.tl", include_str!("../../../patterns/mule_fan_out.tl")),
];

/// The file of [`OPEN_PATTERN`] in the work directory.
pub const OPEN_FILE: &str = "open/open_partials.tl";

/// A pattern whose partial matches stay open: every payment starts one, nothing completes it
/// within its 30 days. The state of the restore benchmark.
pub const OPEN_PATTERN: &str = "pattern open_partials
  \"Every payment starts a partial match that nothing completes: state for the restore benchmark\"
  from payments
  key account_id
  match a followed by b
  where
    a: amount >= 0.0
    b: amount < 0.0
  within 30d
";

/// 2026-01-01T00:00:00Z, the event time of the first generated payment.
pub const START: i64 = 1_767_225_600_000;

/// Progress, on stderr, with the seconds since the benchmark started.
pub fn say(text: &str) {
    static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let secs = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    err(&format!("bench kafka [{secs:6.1}s]: {text}\n"));
}

/// The benchmark's surroundings: the work directory, the broker and registry, this binary.
#[derive(Debug)]
pub struct Env {
    pub work: PathBuf,
    pub bootstrap: String,
    pub registry: String,
    exe: PathBuf,
}

/// A generated service config and the address of its HTTP endpoints.
#[derive(Debug, Clone)]
pub struct SvcConfig {
    pub path: PathBuf,
    pub http: String,
    pub group: String,
    pub state_dir: PathBuf,
}

/// What one generated config says.
#[derive(Debug, Clone, Copy)]
pub struct ConfigSpec<'a> {
    /// The payments stream's topic.
    pub topic: &'a str,
    pub group: &'a str,
    pub instance: &'a str,
    pub interval_ms: u64,
    /// Pattern files, relative to the work directory.
    pub patterns: &'a [&'a str],
}

impl Env {
    /// Prepares `work` (created; it must be empty if it exists): the payments schema and the
    /// patterns are written into it.
    pub fn new(work: &Path, bootstrap: &str, registry: &str) -> Result<Env> {
        if work.exists()
            && std::fs::read_dir(work).or_fail_with(Kind::Usage, || format!("cannot read {}", work.display()))?.count()
                > 0
        {
            return Err(Error::usage(format!("the work directory {} is not empty", work.display())));
        }
        std::fs::create_dir_all(work).or_fail_with(Kind::Usage, || format!("cannot create {}", work.display()))?;
        // Absolute: the services run in it and are given paths in it.
        let work = &work.canonicalize().or_fail_with(Kind::Usage, || format!("cannot resolve {}", work.display()))?;
        let write = |name: &str, text: &str| {
            let p = work.join(name);
            std::fs::create_dir_all(p.parent().unwrap_or(work))
                .and_then(|()| std::fs::write(&p, text))
                .or_fail_with(Kind::Usage, || format!("cannot write {}", p.display()))
        };
        write("payments.avsc", SCHEMA)?;
        for (file, text) in PAYMENT_PATTERNS {
            write(file, text)?;
        }
        write(OPEN_FILE, OPEN_PATTERN)?;
        let exe = std::env::current_exe().or_fail(Kind::Usage, "cannot find the tripline binary itself")?;
        Ok(Env { work: work.to_owned(), bootstrap: bootstrap.to_owned(), registry: registry.to_owned(), exe })
    }

    /// Writes a service config `<group>-<instance>.toml` (outputs named after the group, a free
    /// loopback port for HTTP).
    pub fn config(&self, spec: ConfigSpec<'_>) -> Result<SvcConfig> {
        let ConfigSpec { topic, group, instance, interval_ms, patterns } = spec;
        let port = free_port()?;
        let list: Vec<String> = patterns.iter().map(|p| format!("{p:?}")).collect();
        let state_dir = format!("state-{group}-{instance}");
        let text = format!(
            r#"# Written by `tripline bench kafka`.
[streams.payments]
topic = {topic:?}
schema = "payments.avsc"
timestamp_field = "event_time"
max_out_of_orderness = "5s"
key = "account_id"

[engine]
max_partial_matches_per_key = 10000

[kafka]
bootstrap_servers = {bootstrap:?}
group_id = {group:?}

[registry]
url = {registry:?}

[outputs]
alerts_topic = "{group}.alerts"
shadow_alerts_topic = "{group}.alerts.shadow"
late_topic = "{group}.late"
dead_letter_topic = "{group}.dead-letter"
pattern_sets_topic = "{group}.pattern-sets"

[service]
patterns = [{list}]
state_dir = {state_dir:?}
instance_id = {instance:?}
commit_interval = "{interval_ms}ms"
http_addr = "127.0.0.1:{port}"
"#,
            bootstrap = self.bootstrap,
            registry = self.registry,
            list = list.join(", "),
        );
        let path = self.work.join(format!("{group}-{instance}.toml"));
        std::fs::write(&path, text).or_fail_with(Kind::Failed, || format!("cannot write {}", path.display()))?;
        Ok(SvcConfig {
            path,
            http: format!("127.0.0.1:{port}"),
            group: group.to_owned(),
            state_dir: self.work.join(state_dir),
        })
    }

    /// The configuration of `cfg` as the tools load it (no environment overrides).
    pub fn load(&self, cfg: &SvcConfig) -> Result<Config> {
        Config::load(&cfg.path)
    }

    /// Writes JSON-lines events into the work directory and produces them with `tripline
    /// produce`'s code through `cfg`'s stream (topic created with `partitions`).
    pub fn produce(&self, cfg: &SvcConfig, name: &str, lines: &str, partitions: i32) -> Result<u64> {
        let path = self.work.join(name);
        std::fs::write(&path, lines).or_fail_with(Kind::Failed, || format!("cannot write {}", path.display()))?;
        super::produce::produce(Some(&cfg.path), &path, partitions)
    }

    /// Starts `tripline run --config` (this binary) as a child process; its log is
    /// `<work>/<name>.log`.
    pub fn start(&self, cfg: &SvcConfig, name: &str) -> Result<Service> {
        let log_path = self.work.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .or_fail_with(Kind::Failed, || format!("cannot write {}", log_path.display()))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["run", "--config"]).arg(&cfg.path).current_dir(&self.work);
        // The generated config says everything: no override from this environment.
        for (var, _) in ENV_OVERRIDES {
            cmd.env_remove(var);
        }
        let child = cmd
            .env("RUST_LOG", "info,librdkafka=warn")
            .env("TRIPLINE_PROGRESS", "never")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .or_fail_with(Kind::Failed, || format!("cannot start {} run", self.exe.display()))?;
        Ok(Service { child: Some(child), name: name.to_owned(), http: cfg.http.clone(), log: log_path })
    }

    /// A client configuration for the broker.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        c.set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
        c
    }

    /// A consumer in `group` that never joins it (committed offsets, watermarks, assigned reads).
    pub fn consumer(&self, group: &str) -> Result<BaseConsumer> {
        self.client()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .create()
            .or_fail(Kind::Failed, "cannot create a Kafka consumer")
    }

    /// Deletes topics (the outputs of a part, so that the broker, which keeps everything in one
    /// file, does not carry them into the next part). A failure is only reported.
    pub fn delete_topics(&self, topics: &[String]) {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let started = Instant::now();
        let done = (|| -> Result<()> {
            let admin: AdminClient<DefaultClientContext> =
                self.client().create().or_fail(Kind::Failed, "cannot create an admin client")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .or_fail(Kind::Failed, "a runtime for the admin client")?;
            let results = rt
                .block_on(admin.delete_topics(&names, &AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT))))
                .or_fail(Kind::Failed, "cannot delete topics")?;
            for r in results {
                if let Err((name, code)) = r {
                    say(&format!("could not delete topic `{name}`: {code}"));
                }
            }
            Ok(())
        })();
        match done {
            Ok(()) => say(&format!("deleted {} topic(s) in {:.1} s", names.len(), started.elapsed().as_secs_f64())),
            Err(e) => say(&format!("{e}")),
        }
    }

    /// The end (high watermark) of every partition of `topic`.
    pub fn ends(&self, topic: &str) -> Result<Vec<i64>> {
        let c = self.consumer("bench-probe")?;
        let n = partitions(&c, topic)?;
        (0..n)
            .map(|p| {
                c.fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                    .map(|(_, hi)| hi)
                    .or_fail_with(Kind::Failed, || format!("cannot read the end of {topic}/{p}"))
            })
            .collect()
    }

    /// The committed records of `topic`, read (read_committed) to the end of every partition.
    pub fn committed_records(&self, topic: &str) -> Result<Vec<Vec<u8>>> {
        let c = self.consumer("bench-count")?;
        let n = partitions(&c, topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..n {
            tpl.add_partition_offset(topic, p, Offset::Beginning).or_fail(Kind::Failed, "assignment")?;
        }
        c.assign(&tpl).or_fail_with(Kind::Failed, || format!("cannot read {topic}"))?;
        let mut out = Vec::new();
        let mut eof = std::collections::BTreeSet::new();
        let mut last = Instant::now();
        while eof.len() < n as usize {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    out.push(rdkafka::Message::payload(&m).unwrap_or_default().to_vec());
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    eof.insert(p);
                }
                Some(Err(e)) => say(&format!("reading {topic}: {e}")),
                None => {}
            }
            if last.elapsed() > Duration::from_secs(60) {
                return Err(Error::failed(format!("reading {topic} stalled")));
            }
        }
        Ok(out)
    }
}

/// The partition count of `topic`.
pub fn partitions(c: &BaseConsumer, topic: &str) -> Result<i32> {
    match kafka::partition_counts(c, &[topic])?[0] {
        Some(n) => Ok(n as i32),
        None => Err(Error::failed(format!("no topic `{topic}`"))),
    }
}

/// Whether `group` (read through `c`, a consumer of that group) has committed every partition
/// of `topic` up to `ends`.
pub fn caught_up(c: &BaseConsumer, topic: &str, ends: &[i64]) -> bool {
    let mut tpl = TopicPartitionList::new();
    for p in 0..ends.len() as i32 {
        tpl.add_partition(topic, p);
    }
    let Ok(committed) = c.committed_offsets(tpl, REQUEST_TIMEOUT) else { return false };
    ends.iter().enumerate().all(|(p, hi)| {
        *hi == 0
            || matches!(committed.find_partition(topic, p as i32).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= *hi)
    })
}

/// A free loopback port.
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .or_fail(Kind::Failed, "no free loopback port")
}

/// A `tripline run` child process; killed (SIGKILL) when dropped unless stopped.
#[derive(Debug)]
pub struct Service {
    child: Option<Child>,
    pub name: String,
    pub http: String,
    pub log: PathBuf,
}

impl Service {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then waits (60 s at most) for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let started = Instant::now();
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.failure("did not stop within 60 s of SIGTERM"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if status.success() {
            Ok(())
        } else {
            Err(self.failure(&format!("ended with {status}")))
        }
    }

    /// An error if the process has ended.
    pub fn check_running(&mut self) -> Result<()> {
        let status: Option<ExitStatus> = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        match status {
            Some(s) => {
                self.child = None;
                Err(self.failure(&format!("ended early ({s})")))
            }
            None => Ok(()),
        }
    }

    fn failure(&self, what: &str) -> Error {
        Error::failed(format!(
            "tripline run `{}` {what}; the end of {}:\n{}",
            self.name,
            self.log.display(),
            self.log_tail()
        ))
    }

    /// The last lines of the log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The log's lines with `message`.
    pub fn log_lines(&self, message: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(message))
            .map(str::to_owned)
            .collect()
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        http_get(&self.http, "/readyz").is_some_and(|(code, _)| code == 200)
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        while !self.ready() {
            self.check_running()?;
            if started.elapsed() > limit {
                return Err(self.failure(&format!("was not ready within {limit:?}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(started.elapsed())
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Option<Metrics> {
        Metrics::scrape(&self.http)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` on a loopback HTTP address: the status and the body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let code = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((code, body))
}

/// A Prometheus text exposition.
#[derive(Debug)]
pub struct Metrics(String);

impl Metrics {
    /// `GET /metrics` on `addr`, if it answers 200.
    pub fn scrape(addr: &str) -> Option<Metrics> {
        http_get(addr, "/metrics").filter(|(code, _)| *code == 200).map(|(_, body)| Metrics(body))
    }

    /// The sum of a metric's samples whose labels include every `labels` pair (`k="v"`).
    pub fn sum(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let (metric, lbls) = series.split_once('{').unwrap_or((series, ""));
            if metric != name || !labels.iter().all(|l| lbls.contains(l)) {
                continue;
            }
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

/// A small deterministic generator (xorshift64*); the Kafka tests use it too.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// `n` payments over `keys` accounts as JSON lines for `tripline produce`, in event-time order
/// with jitter below the stream's 5 s out-of-orderness, shaped so the payment patterns alert:
/// also the generator of the Kafka tests (`service/tests/common`).
pub fn payments(n: usize, keys: u64, seed: u64, start: i64, prefix: &str) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::with_capacity(n * 330);
    let channels = ["TRANSFER", "INSTANT_TRANSFER", "CASH_DEPOSIT", "CARD", "ATM_WITHDRAWAL", "INTERNATIONAL_WIRE"];
    for i in 0..n {
        let account = rng.below(keys);
        let ts = start + i as i64 * 50 + rng.below(2_000) as i64;
        let channel = channels[rng.below(channels.len() as u64) as usize];
        let direction = if channel == "CASH_DEPOSIT" || rng.below(2) == 0 { "IN" } else { "OUT" };
        let amount = match rng.below(10) {
            0..=2 => 8_000.0 + rng.below(2_000) as f64,
            3..=4 => 5_000.0 + rng.below(20_000) as f64,
            _ => 10.0 + rng.below(1_000) as f64,
        };
        let counterparty = format!("CP-{}", rng.below(200));
        let branch = if channel == "CASH_DEPOSIT" { format!("\"BR-{}\"", rng.below(20)) } else { "null".to_owned() };
        let _ = writeln!(
            out,
            r#"{{"stream":"payments","value":{{"payment_id":"{prefix}-{i}","account_id":"ACC-{account}","customer_id":"C-{account}","counterparty_account_id":"{counterparty}","counterparty_name":null,"counterparty_country":"DE","direction":"{direction}","amount":{amount:.1},"currency":"EUR","channel":"{channel}","country":"DE","branch_id":{branch},"reference":null,"event_time":{ts}}}}}"#
        );
    }
    out
}

/// Payments for the restore benchmark: accounts `R-<first>` .. `R-<first + keys - 1>`, `per_key`
/// consecutive payments each (so a commit interval changes few keys twice), one millisecond
/// apart from `start`; each starts a partial match of [`OPEN_PATTERN`] that stays open.
pub fn open_payments(first: u64, keys: u64, per_key: u64, start: i64) -> String {
    let mut out = String::with_capacity((keys * per_key) as usize * 330);
    let mut i = 0i64;
    for k in first..first + keys {
        for j in 0..per_key {
            let _ = writeln!(
                out,
                r#"{{"stream":"payments","value":{{"payment_id":"R-{k}-{j}","account_id":"R-{k}","customer_id":"C-{k}","counterparty_account_id":"CP-{j}","counterparty_name":null,"counterparty_country":"DE","direction":"IN","amount":{amount}.0,"currency":"EUR","channel":"TRANSFER","country":"DE","branch_id":null,"reference":null,"event_time":{ts}}}}}"#,
                amount = 10 + (k * 7 + j) % 990,
                ts = start + i,
            );
            i += 1;
        }
    }
    out
}

/// How many of the alert lines each pattern made.
pub fn alerts_by_pattern(lines: &[Vec<u8>]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        let p = serde_json::from_slice::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["pattern"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".to_owned());
        *m.entry(p).or_insert(0) += 1;
    }
    m
}

/// The size of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A process's resident set (`VmRSS`) or its peak (`VmHWM`), in KB, from `/proc`; 0 if unknown.
pub fn memory_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim_start_matches(':').trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}
