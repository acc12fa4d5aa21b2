//! Scale-out: two instances in one group, then a third, then one leaves mid-run; partitions
//! move with their state (through the changelog), and the committed alerts are exactly those of
//! a replay: none twice, none missing.

#![allow(clippy::print_stderr)] // the figures are the output

mod common;

use std::time::{Duration, Instant};

use common::{assert_same, by_id, log_tail, write_config, DevEnv, Service};

#[test]
fn instances_join_and_leave_without_changing_the_alerts() {
    let env = DevEnv::start();
    let dir = env.dir.path().to_owned();
    std::fs::write(dir.join("payments.jsonl"), common::payments(120_000, 5_000, 11)).expect("written");
    // Dynamic membership (the default): an instance that stops leaves the group, and its
    // partitions move at once.
    let cfg = |i: &str| write_config(&dir, "scale", i, "100ms", "");
    let (a, b, c) = (cfg("a"), cfg("b"), cfg("c"));
    env.run_ok(&["produce", "--config", &a.display().to_string(), "--input", "payments.jsonl", "--partitions", "6"]);

    let t = Instant::now();
    let mut sa = Service::start(&env, &a, "scale-a");
    let mut sb = Service::start(&env, &b, "scale-b");
    std::thread::sleep(Duration::from_millis(2_500));
    let mut sc = Service::start(&env, &c, "scale-c");
    std::thread::sleep(Duration::from_millis(2_500));
    let mid_run = !env.caught_up("scale", "payments");
    // B leaves (SIGTERM: commit, leave the group); its partitions move to A and C.
    assert!(sb.stop().success(), "b did not stop cleanly:\n{}", log_tail(&env, "scale-b"));
    env.wait_caught_up("scale", "payments", Duration::from_secs(600));
    for (s, name) in [(&mut sa, "scale-a"), (&mut sc, "scale-c")] {
        assert!(s.stop().success(), "{name} did not stop cleanly:\n{}", log_tail(&env, name));
    }
    eprintln!("three instances, one leaving (mid-run: {mid_run}), done in {:?}", t.elapsed());
    let mut from_changelog = 0;
    for name in ["scale-a", "scale-b", "scale-c"] {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        assert!(log.contains("partitions assigned"), "{name} never got partitions:\n{}", log_tail(&env, name));
        from_changelog += log.matches("from_changelog=").count() - log.matches("from_changelog=0").count();
    }
    // Partitions moved between instances (separate state directories): their state came from the
    // changelog.
    assert!(from_changelog > 0, "no partition was restored from the changelog");
    let committed = by_id(&env.committed(&a, "scale.alerts"), "three instances");
    assert!(committed.len() > 500, "{} alerts", committed.len());

    let replayed = common::export_and_replay(&env, &a, 0);
    assert_same(&committed, &by_id(&replayed, "replay"), "three instances vs replay");
}
