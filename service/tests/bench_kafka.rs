//! `tripline bench kafka` (what `scripts/bench-kafka` runs) at small sizes against the test
//! broker: every part runs, prints its line, and leaves no service behind. The figures are not
//! checked; `scripts/bench-kafka` at its default sizes is the benchmark.

mod common;

use common::DevEnv;

#[test]
fn every_part_runs_at_small_sizes() {
    let env = DevEnv::start();
    let args = [
        "bench",
        "kafka",
        "--work-dir",
        "bench",
        "--events",
        "2000",
        "--keys",
        "200",
        "--intervals",
        "10,100",
        "--rate",
        "1000",
        "--latency-events",
        "2000",
        "--rebalance-events",
        "1000",
        "--state-mb",
        "1",
    ];
    let out = env.tripline().args(args).output().expect("tripline runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench kafka failed ({}):\n{stdout}\n{stderr}", out.status);
    let lines: Vec<&str> = stdout.lines().collect();
    let field = |line: &str, name: &str| -> f64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim_end_matches("/s").trim_end_matches("ms"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number {name}= in {line:?}:\n{stdout}"))
    };
    let find = |prefix: &str| -> &str {
        lines.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?} in:\n{stdout}"))
    };
    assert_eq!(field(find("raw "), "records"), 2000.0);
    for ms in ["10ms", "100ms"] {
        let l = find(&format!("interval={ms} "));
        assert!(field(l, "service") > 0.0 && field(l, "ratio") >= 0.0, "{l}");
    }
    let alerts = find("alerts=");
    assert!(alerts.contains("the same at every commit interval"), "{alerts}");
    assert!(field(find("latency rate=1000/s interval=10ms "), "alerts") > 0.0);
    assert!(field(find("rebalance partitions=8 "), "ms") > 0.0);
    for source in ["store", "changelog"] {
        let l = find(&format!("restore source={source} "));
        assert!(field(l, "bytes") >= 1e6 && field(l, "ms") > 0.0, "{l}");
    }
    // Every service it started has stopped.
    let ps = std::process::Command::new("ps").args(["-eo", "args"]).output().expect("ps runs");
    let work = env.dir.path().join("bench");
    let left: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(" run --config ") && l.contains(&*work.to_string_lossy()))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "services left running: {left:?}");
}
