//! Observability against a real Prometheus: the Debian `prometheus` binary (installed by
//! `scripts/setup`) scrapes a running `tripline run` every second during an end-to-end run, with
//! the project's alert rules loaded. Then:
//! - `/metrics` serves exactly the metrics `docs/metrics.md` lists, with their types;
//! - every PromQL expression of the Grafana dashboards evaluates through Prometheus's HTTP API
//!   and returns data; every alert rule is loaded, evaluated without error, and its expression
//!   parses as a query;
//! - the counters agree with what was committed (alerts, dead letters, the funnel);
//! - `promtool check rules`, `promtool test rules` and `promtool check config` pass;
//! - a pattern reload by SIGHUP is counted, a bad one as failed (the running set is kept).

#![allow(clippy::print_stderr)] // progress and figures are the output

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, log_tail, root, write_config, DevEnv, Service};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

/// A Prometheus server on loopback; killed when dropped.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        let rules = root().join("grafana/prometheus/alerts.yml");
        let config = dir.join("prometheus.yml");
        let text = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: tripline\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules = rules.display().to_string(),
        );
        std::fs::write(&config, text).expect("prometheus.yml written");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the `prometheus` binary runs (scripts/setup installs it)");
        let p = Prometheus { child, addr };
        let start = Instant::now();
        while get(&p.addr, "/-/ready").map(|(s, _)| s) != Some(200) {
            assert!(start.elapsed() < Duration::from_secs(30), "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// An instant query: the result vector (the query must parse and evaluate).
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let (status, body) = get(&self.addr, &path).ok_or("prometheus did not answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {}", v["error"].as_str().unwrap_or(&body)));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of a query returning one sample.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let r = self.query(expr).ok()?;
        r.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.0 (no chunking): status and body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Percent-encoding of a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The metrics `docs/metrics.md` documents: name -> type.
fn documented() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            name.starts_with("tripline_").then(|| (name.to_owned(), cells.get(2).copied().unwrap_or("").to_owned()))
        })
        .collect()
}

/// The metrics a `/metrics` page serves: name -> type, from its `# TYPE` lines.
fn served(page: &str) -> BTreeMap<String, String> {
    page.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.to_owned()))
        })
        .collect()
}

/// Every PromQL expression of a dashboard (its panels' targets), with its panel title.
fn dashboard_exprs(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).expect("dashboard");
    let d: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or("?").to_owned(), e.to_owned()));
            }
        }
    }
    out
}

/// A dashboard expression as Grafana would send it with every variable at "All".
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$instance", ".*")
        .replace("$stream", ".*")
        .replace("$pattern", ".*")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).current_dir(root()).output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_rules_and_the_example_config_pass_promtool() {
    promtool(&["check", "rules", "grafana/prometheus/alerts.yml"]);
    promtool(&["test", "rules", "grafana/prometheus/alerts_test.yml"]);
    promtool(&["check", "config", "--syntax-only", "grafana/prometheus/prometheus.yml"]);
}

/// Copies the payment patterns into `dir` (the config refers to the copies, which the test
/// then edits for the reload).
fn own_patterns(dir: &Path) -> Vec<PathBuf> {
    common::PAYMENT_PATTERNS
        .iter()
        .map(|p| {
            let to = dir.join(format!("{p}.tl"));
            std::fs::copy(root().join(format!("patterns/{p}.tl")), &to).expect("pattern copied");
            to
        })
        .collect()
}

#[test]
fn prometheus_scrapes_the_service_and_every_dashboard_and_rule_expression_works() {
    let env = DevEnv::start();
    let dir = env.dir.path().to_owned();
    let cfg = write_config(&dir, "obs", "a", "100ms", "");
    // The config names the library's files; point it at copies the test can edit.
    let patterns = own_patterns(&dir);
    let mut text = std::fs::read_to_string(&cfg).expect("config");
    for (name, copy) in common::PAYMENT_PATTERNS.iter().zip(&patterns) {
        let lib = root().join(format!("patterns/{name}.tl")).display().to_string();
        text = text.replace(&format!("{lib:?}"), &format!("{:?}", copy.display().to_string()));
    }
    std::fs::write(&cfg, &text).expect("config written");
    let http = text.lines().find_map(|l| l.strip_prefix("http_addr = ")).expect("http_addr").trim_matches('"');
    let http = http.to_owned();

    std::fs::write(dir.join("events.jsonl"), common::payments(20_000, 400, 11)).expect("written");
    env.run_ok(&["produce", "--config", &cfg.display().to_string(), "--input", "events.jsonl", "--partitions", "2"]);
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &env.bootstrap).create().expect("producer");
    for _ in 0..3 {
        producer.send(BaseRecord::<str, [u8]>::to("payments").key("ACC-1").payload(b"not avro")).expect("queued");
    }
    producer.flush(Duration::from_secs(10)).expect("flushed");

    let prom = Prometheus::start(&dir, &http);
    let mut svc = Service::start(&env, &cfg, "obs");
    common::wait_ready(&cfg, Duration::from_secs(60));
    env.wait_caught_up("obs", "payments", Duration::from_secs(300));

    // /metrics: exactly the documented metrics, with their types. The consumer lag gauges come
    // with the client's first statistics (every second), which a quick catch-up can beat.
    let documented = documented();
    let started = Instant::now();
    let (page, served) = loop {
        let (status, page) = get(&http, "/metrics").expect("/metrics answers");
        assert_eq!(status, 200);
        let served = served(&page);
        if served == documented || started.elapsed() > Duration::from_secs(10) {
            break (page, served);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(documented.len() >= 30, "the catalog in docs/metrics.md: {documented:?}");
    assert_eq!(served, documented, "/metrics vs docs/metrics.md");

    // The counters agree with what was committed.
    let sample = |name: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let alerts = env.committed(&cfg, "obs.alerts").len() as f64;
    assert!(alerts > 0.0);
    assert_eq!(sample("tripline_alerts_total"), alerts, "alerts counted = alerts committed");
    assert_eq!(sample("tripline_matches_total"), alerts);
    assert_eq!(sample("tripline_records_consumed_total"), 20_003.0);
    assert_eq!(sample("tripline_decode_failures_total"), 3.0);
    assert_eq!(sample("tripline_records_dead_lettered_total"), 3.0);
    assert_eq!(
        sample("tripline_events_processed_total") + sample("tripline_events_late_total") + 3.0,
        20_003.0,
        "consumed = processed + late + dead-lettered"
    );
    assert!(sample("tripline_transactions_committed_total") > 0.0);
    assert_eq!(sample("tripline_ready"), 1.0);

    // Let Prometheus see the final values and a few more scrapes.
    let start = Instant::now();
    while prom.scalar("sum(tripline_records_consumed_total)") != Some(20_003.0) {
        assert!(start.elapsed() < Duration::from_secs(30), "prometheus did not scrape the service");
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(prom.scalar("sum(tripline_alerts_total)"), Some(alerts));

    // The funnel of `credit followed by debit`: partial matches start at credit, fewer reach debit.
    let funnel = prom
        .query(r#"sum by (position, step) (tripline_funnel_reached_total{pattern="rapid_movement"})"#)
        .expect("funnel query");
    let mut steps: Vec<(u32, String, f64)> = funnel
        .iter()
        .map(|s| {
            let m = &s["metric"];
            let position = m["position"].as_str().and_then(|p| p.parse().ok()).unwrap_or(0);
            let value = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(-1.0);
            (position, m["step"].as_str().unwrap_or("?").to_owned(), value)
        })
        .collect();
    steps.sort_by_key(|s| s.0);
    eprintln!("rapid_movement funnel: {steps:?}");
    let names: Vec<&str> = steps.iter().map(|s| s.1.as_str()).collect();
    assert_eq!(names, ["credit", "debit"], "{steps:?}");
    assert!(steps[0].2 > steps[1].2 && steps[1].2 > 0.0, "{steps:?}");
    let matched = prom.scalar(r#"sum(tripline_matches_total{pattern="rapid_movement"})"#).unwrap_or(-1.0);
    assert!(matched > 0.0 && matched <= steps[1].2, "matches {matched} vs {steps:?}");

    // Pattern reloads by SIGHUP: a broken file is refused (the running set stays), a good
    // change is activated.
    let hup = |svc: &Service| {
        let ok = Command::new("kill").arg("-HUP").arg(svc.child.id().to_string()).status().expect("kill");
        assert!(ok.success());
    };
    let reloads = |result: &str| {
        let (_, page) = get(&http, "/metrics").expect("/metrics");
        let line = format!("tripline_pattern_reloads_total{{result=\"{result}\"}} ");
        page.lines().find_map(|l| l.strip_prefix(&line)?.parse::<f64>().ok()).unwrap_or(-1.0)
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(20), "{what}:\n{}", log_tail(&env, "obs"));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let original = std::fs::read_to_string(&patterns[0]).expect("pattern");
    std::fs::write(&patterns[0], original.replace("match", "mtach")).expect("broken");
    hup(&svc);
    wait_for("a failed reload is counted", &|| reloads("failed") == 1.0);
    assert_eq!(reloads("ok"), 0.0);
    let log = std::fs::read_to_string(dir.join("obs.log")).expect("service log");
    assert!(log.contains("pattern reload refused, the running patterns stay"), "{log}");
    assert!(log.contains("structuring.tl:"), "the error names the file, line and column: {log}");
    let changed = original.replacen("version ", "version 1", 1);
    assert_ne!(changed, original, "the pattern declares a version");
    std::fs::write(&patterns[0], &changed).expect("changed");
    hup(&svc);
    wait_for("a good reload is counted", &|| reloads("ok") == 1.0);
    assert_eq!(reloads("failed"), 1.0, "counters are never reset by a reload");
    // The activation is recorded for replays: the new set, its versions, where it took effect.
    let sets: Vec<Value> = env
        .committed(&cfg, "tripline.pattern-sets")
        .iter()
        .map(|l| serde_json::from_str(l).expect("an activation record"))
        .collect();
    let (first, last) = (&sets[0], &sets[sets.len() - 1]);
    assert_eq!((first["reason"].as_str(), last["reason"].as_str()), (Some("assign"), Some("reload")), "{sets:?}");
    assert_ne!(first["set"], last["set"]);
    let version = |a: &Value| {
        a["patterns"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "structuring")
            .map(|p| p["version"].clone())
    };
    assert_eq!(version(last), Some(serde_json::json!(11)), "{last}");
    let positions = last["positions"].as_array().expect("positions");
    assert!(!positions.is_empty() && positions.iter().any(|p| p["offset"].as_i64() > Some(0)), "{last}");

    // Every dashboard expression parses and returns data.
    let start = Instant::now();
    let mut dashboards = 0;
    for name in ["overview", "patterns", "kafka"] {
        let path = root().join(format!("grafana/dashboards/{name}.json"));
        let exprs = dashboard_exprs(&path);
        assert!(exprs.len() >= 8, "{name}: only {} expressions", exprs.len());
        for (title, expr) in exprs {
            let sent = as_sent(&expr);
            // Rates need two samples in their window: retry while the window fills.
            let result = loop {
                let r = prom.query(&sent);
                match &r {
                    Ok(v) if v.is_empty() && start.elapsed() < Duration::from_secs(20) => {
                        std::thread::sleep(Duration::from_millis(500))
                    }
                    _ => break r,
                }
            };
            match result {
                Ok(v) => assert!(!v.is_empty(), "{name} / {title}: `{expr}` returned no data"),
                Err(e) => panic!("{name} / {title}: `{expr}` does not evaluate: {e}"),
            }
            dashboards += 1;
        }
    }

    // Every alert rule is loaded and evaluated without error, and its expression is a query.
    let (_, body) = get(&prom.addr, "/api/v1/rules").expect("rules");
    let v: Value = serde_json::from_str(&body).expect("json");
    let rules: Vec<Value> = v["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(rules.len() >= 10, "alert rules loaded: {body}");
    let mut names = BTreeSet::new();
    for r in &rules {
        let name = r["name"].as_str().unwrap_or("?");
        assert_eq!(r["health"], "ok", "rule {name}: {r}");
        let expr = r["query"].as_str().expect("query");
        prom.query(expr).unwrap_or_else(|e| panic!("rule {name}: `{expr}`: {e}"));
        names.insert(name.to_owned());
    }
    for want in [
        "TriplineDown",
        "TriplineNoEventsConsumed",
        "TriplineConsumerLagGrowing",
        "TriplineWatermarkStalled",
        "TriplineCommitsFailing",
        "TriplineDeadLetterRate",
        "TriplineLateEventRate",
        "TriplinePartialMatchBudgetHit",
        "TriplineRestoreSlow",
        "TriplinePatternReloadFailed",
        "TriplineWriterSchemaBreaksPatterns",
    ] {
        assert!(names.contains(want), "no alert rule {want}: {names:?}");
    }
    // The failed reload makes its alert fire (the rule sees the counter's increase).
    let start = Instant::now();
    while prom.query(r#"ALERTS{alertname="TriplinePatternReloadFailed"}"#).map(|v| v.is_empty()).unwrap_or(true) {
        assert!(start.elapsed() < Duration::from_secs(20), "TriplinePatternReloadFailed did not fire");
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("{dashboards} dashboard expressions and {} alert rules checked against Prometheus", rules.len());

    assert!(svc.stop().success(), "the service did not stop cleanly:\n{}", log_tail(&env, "obs"));
}
