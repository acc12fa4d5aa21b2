//! Exactly once through crashes: the service is killed with SIGKILL at random moments (and the
//! broker restarted once) while it works through 200,000 payments over 10,000 accounts in four
//! partitions; the alerts it committed must equal, alert for alert and byte for byte, those of
//! an uninterrupted run and of `tripline replay` over the same records. Beside the library's
//! payment patterns runs one keyed by the counterparty (`testdata/patterns/counterparty_burst.tl`),
//! which the service reads through a repartition topic: the crashes go through that stage too.

#![allow(clippy::print_stderr)] // the figures are the output

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{assert_same, by_id, http_status, log_tail, root, write_config, DevEnv, Rng, Service, PAYMENT_PATTERNS};

const EVENTS: usize = 200_000;
const KEYS: u64 = 10_000;
const KILLS: usize = 10;

#[test]
fn sigkill_and_broker_restart_change_nothing() {
    let env = DevEnv::start();
    let dir = env.dir.path().to_owned();
    let input = dir.join("payments.jsonl");
    std::fs::write(&input, common::payments(EVENTS, KEYS, 42)).expect("events written");
    let steady_cfg = with_repartitioned(write_config(&dir, "steady", "a", "100ms", ""));
    let t = Instant::now();
    env.run_ok(&[
        "produce",
        "--config",
        &steady_cfg.display().to_string(),
        "--input",
        "payments.jsonl",
        "--partitions",
        "4",
    ]);
    eprintln!("produced {EVENTS} events in {:?}", t.elapsed());

    // Uninterrupted.
    let t = Instant::now();
    let mut svc = Service::start(&env, &steady_cfg, "steady");
    env.wait_caught_up("steady", "payments", Duration::from_secs(600));
    wait_repartitioned(&env, "steady");
    assert!(svc.stop().success(), "steady run did not stop cleanly:\n{}", log_tail(&env, "steady"));
    let steady = by_id(&env.committed(&steady_cfg, "steady.alerts"), "uninterrupted run");
    eprintln!("uninterrupted: {} alerts in {:?}", steady.len(), t.elapsed());
    assert!(steady.len() > 1_000, "the generated events should make many alerts, got {}", steady.len());
    let rekeyed = steady.values().filter(|l| l.contains("\"pattern\":\"counterparty_burst\"")).count();
    assert!(rekeyed > 50, "the repartitioned pattern should alert, got {rekeyed}");

    // Killed again and again.
    // Static membership: the restarted instance takes its partitions back at once. (With dynamic
    // membership it waits for the killed one's session to expire, which the development broker
    // never does; a real cluster does after session.timeout.ms.)
    let crash_cfg = with_repartitioned(write_config(&dir, "crash", "a", "100ms", ""));
    let text = std::fs::read_to_string(&crash_cfg).expect("config");
    std::fs::write(&crash_cfg, text.replace("group_id = \"crash\"", "group_id = \"crash\"\nstatic_membership = true"))
        .expect("config");
    let mut rng = Rng::new(7);
    let t = Instant::now();
    let mut svc = Service::start(&env, &crash_cfg, "crash");
    let mut kills = 0;
    let mut kills_before_done = 0;
    let mut broker_restarted = false;
    while kills < KILLS || !done(&env, "crash") {
        assert!(t.elapsed() < Duration::from_secs(900), "crash run takes too long:\n{}", log_tail(&env, "crash"));
        if let Some(status) = svc.exited() {
            panic!("the service exited by itself ({status}):\n{}", log_tail(&env, "crash"));
        }
        if kills >= KILLS {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        // Spaced so that most kills land before the input is done (the service got faster).
        std::thread::sleep(Duration::from_millis(200 + rng.below(900)));
        if !done(&env, "crash") {
            kills_before_done += 1;
        }
        svc.kill9();
        kills += 1;
        if kills == KILLS / 2 && env.can_restart_broker() {
            env.restart_broker();
            broker_restarted = true;
        }
        svc = Service::start(&env, &crash_cfg, "crash");
    }
    // The last instance may have been started just now, with nothing left to do: stop it once it
    // is up (a SIGTERM in its first milliseconds, before `main` installs the handler, is the
    // default action's death; seen twice in this test when it stopped the instance at once).
    let up = Instant::now();
    while http_status(&crash_cfg, "/healthz").is_none() {
        assert!(up.elapsed() < Duration::from_secs(60), "the last instance never served:\n{}", log_tail(&env, "crash"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = svc.stop();
    assert!(status.success(), "crash run did not stop cleanly ({status}):\n{}", log_tail(&env, "crash"));
    let crashed = by_id(&env.committed(&crash_cfg, "crash.alerts"), "killed run");
    eprintln!(
        "killed {kills} times ({kills_before_done} before the input was done), broker restarted: {broker_restarted}; {} alerts in {:?}",
        crashed.len(),
        t.elapsed()
    );
    assert!(kills_before_done >= KILLS / 2, "most kills should land mid-run, only {kills_before_done} did");
    assert_same(&steady, &crashed, "uninterrupted vs killed");

    // Replay over the same records: of the payments topic exported to a file, with the library
    // patterns (the file has no repartition topic); and of the topics, the repartition topic
    // included, with the set the service recorded.
    let replayed = common::export_and_replay(&env, &crash_cfg, 0);
    let library: BTreeMap<String, String> = steady
        .iter()
        .filter(|(_, l)| PAYMENT_PATTERNS.iter().any(|p| l.contains(&format!("\"pattern\":\"{p}\""))))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_same(&library, &by_id(&replayed, "replay"), "service vs replay of the export");
    let c = crash_cfg.display().to_string();
    let sets = env.committed(&crash_cfg, "tripline.pattern-sets");
    let set = sets.iter().rev().find(|l| l.contains("\"group\":\"crash\"")).expect("the crash group's set");
    let set: serde_json::Value = serde_json::from_str(set).expect("JSON");
    let set = set["set"].as_str().expect("set hash");
    env.run_ok(&["replay", "--config", &c, "--pattern-set", set, "--output", "replay-kafka.jsonl"]);
    let lines: Vec<String> = std::fs::read_to_string(dir.join("replay-kafka.jsonl"))
        .expect("replay output")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_same(&crashed, &by_id(&lines, "replay of the topics"), "service vs replay of the topics");
}

/// The config with `counterparty_burst` beside the library patterns: a pattern the service
/// reads through the repartition topic `<group>.payments.by-counterparty_account_id`.
fn with_repartitioned(cfg: PathBuf) -> PathBuf {
    let pattern = root().join("testdata/patterns/counterparty_burst.tl");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let text = text.replacen("patterns = [", &format!("patterns = [{:?}, ", pattern.display().to_string()), 1);
    std::fs::write(&cfg, text).expect("config");
    cfg
}

/// The repartition topic of `group`.
fn repartition_topic(group: &str) -> String {
    format!("{group}.payments.by-counterparty_account_id")
}

/// Whether `group` has read the payments and its repartition topic to their ends.
fn done(env: &DevEnv, group: &str) -> bool {
    env.caught_up(group, "payments") && env.caught_up_transactional(group, &repartition_topic(group))
}

/// Waits until `group` has read its repartition topic to its end.
fn wait_repartitioned(env: &DevEnv, group: &str) {
    let t = Instant::now();
    while !env.caught_up_transactional(group, &repartition_topic(group)) {
        assert!(t.elapsed() < Duration::from_secs(300), "{group} did not read its repartition topic to the end");
        std::thread::sleep(Duration::from_millis(300));
    }
}
