//! Exactly once on the unhappy paths, one test per path, against the project's broker: a record
//! whose dead letter would be over the size limit, a producer fenced by a second instance with
//! the same instance id, SIGKILL between a commit and the local store write, and the broker
//! restarted mid-run while the service commits every 10 ms. (The registry going away mid-transaction is
//! `kafka_registry_outage.rs`; SIGKILL at random moments is `kafka_crash.rs`.) Each ends with the
//! committed alerts equal, byte for byte, to a replay of the same records, no alert id twice.

#![allow(clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use common::{assert_same, by_id, log_tail, records, write_config, DevEnv, Service};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// The committed alerts of `group` equal a replay of the input topic's records.
fn alerts_equal_replay(env: &DevEnv, cfg: &std::path::Path, group: &str, replay_exit: i32) -> usize {
    let committed = by_id(&env.committed(cfg, &format!("{group}.alerts")), "committed alerts");
    let replayed = by_id(&common::export_and_replay(env, cfg, replay_exit), "replay");
    assert_same(&replayed, &committed, "replay vs the service's committed alerts");
    committed.len()
}

fn produce_payments(env: &DevEnv, cfg: &std::path::Path, file: &str, text: &str, partitions: &str) {
    std::fs::write(env.dir.path().join(file), text).expect("written");
    env.run_ok(&["produce", "--config", &cfg.display().to_string(), "--input", file, "--partitions", partitions]);
}

fn wait_exit(svc: &mut Service, env: &DevEnv, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = svc.exited() {
            return status;
        }
        assert!(start.elapsed() < limit, "{} did not exit within {limit:?}:\n{}", svc.name, log_tail(env, &svc.name));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_dead_letter_over_the_size_limit_is_cut_not_lost() {
    let env = DevEnv::start();
    let cfg = write_config(env.dir.path(), "big", "a", "50ms", "");
    produce_payments(&env, &cfg, "first.jsonl", &common::payments(2_000, 100, 31), "2");
    // Not Avro, and just under the producer's 1,000,000-byte limit: with the source coordinates
    // and the reason in headers, its dead letter would be over it.
    let big: Vec<u8> = (0..999_900u32).map(|i| b'a' + (i % 26) as u8).collect();
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &env.bootstrap).create().expect("producer");
    producer.send(BaseRecord::<str, [u8]>::to("payments").key("ACC-1").payload(&big)).expect("queued");
    producer.flush(Duration::from_secs(30)).expect("the big record is in the topic");
    produce_payments(
        &env,
        &cfg,
        "second.jsonl",
        &common::payments_from(2_000, 100, 32, common::START + 200_000, "Z"),
        "2",
    );

    let mut svc = Service::start(&env, &cfg, "big");
    env.wait_caught_up("big", "payments", Duration::from_secs(300));
    assert!(svc.stop().success(), "{}", log_tail(&env, "big"));

    let dead = records(&env, "big.dead-letter");
    assert_eq!(dead.len(), 1, "one dead letter: {:?}", dead.iter().map(|(h, _)| h).collect::<Vec<_>>());
    let (h, body) = &dead[0];
    assert_eq!(h.get("tripline.reason").map(String::as_str), Some("not-avro"), "{h:?}");
    assert_eq!(h.get("tripline.truncated").map(String::as_str), Some("999900"), "{h:?}");
    assert!(h.contains_key("tripline.source.partition") && h.contains_key("tripline.source.offset"), "{h:?}");
    assert!(!body.is_empty() && body.len() < big.len() && big.starts_with(body), "the body is cut, not changed");
    let n = alerts_equal_replay(&env, &cfg, "big", 0);
    assert!(n > 0, "the payments make alerts");
}

#[test]
fn a_fenced_instance_stops_and_its_successor_commits_exactly_once() {
    let env = DevEnv::start();
    let dir = env.dir.path().to_owned();
    let cfg_a = write_config(&dir, "fence", "a", "20ms", "");
    // The same instance id (so the same transactional id), another state directory and port.
    let text = std::fs::read_to_string(&cfg_a).expect("config");
    let port = common::free_port();
    let text_b = text.replace("state-fence-a", "state-fence-a-twin").replace(
        &text[text.find("http_addr").expect("http_addr")..].lines().next().expect("line").to_owned(),
        &format!("http_addr = \"127.0.0.1:{port}\""),
    );
    let cfg_b = dir.join("fence-twin.toml");
    std::fs::write(&cfg_b, text_b).expect("config");
    produce_payments(&env, &cfg_a, "first.jsonl", &common::payments(10_000, 500, 33), "4");

    let mut a = Service::start(&env, &cfg_a, "fence-a");
    common::wait_ready(&cfg_a, Duration::from_secs(120));
    let mut b = Service::start(&env, &cfg_b, "fence-b");
    common::wait_ready(&cfg_b, Duration::from_secs(120));
    // More records while both run: the first instance, fenced, must not commit any of them.
    produce_payments(
        &env,
        &cfg_a,
        "second.jsonl",
        &common::payments_from(10_000, 500, 34, common::START + 600_000, "F"),
        "4",
    );
    let status = wait_exit(&mut a, &env, Duration::from_secs(120));
    assert!(!status.success(), "the fenced instance must stop with an error");
    let log_a = std::fs::read_to_string(dir.join("fence-a.log")).expect("log").to_lowercase();
    assert!(log_a.contains("fenc"), "the fenced instance says why:\n{}", log_tail(&env, "fence-a"));
    env.wait_caught_up("fence", "payments", Duration::from_secs(300));
    assert!(b.stop().success(), "{}", log_tail(&env, "fence-b"));
    let n = alerts_equal_replay(&env, &cfg_a, "fence", 0);
    eprintln!("fenced instance: {status}; {n} alerts committed exactly once");
}

#[test]
fn sigkill_between_the_commit_and_the_store_write_restores_from_the_changelog() {
    let env = DevEnv::start();
    // Static membership: the restarted instance takes the killed one's partitions at once (the
    // development broker never expires a dead dynamic member's session).
    let cfg = write_config(env.dir.path(), "gap", "a", "50ms", "");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, text.replace("group_id = \"gap\"", "group_id = \"gap\"\nstatic_membership = true"))
        .expect("config");
    produce_payments(&env, &cfg, "events.jsonl", &common::payments(30_000, 500, 35), "2");
    let mut svc = Service::start_with(&env, &cfg, "gap-killed", &[("TRIPLINE_FAILPOINTS", "kill-after-commit:3")]);
    let status = wait_exit(&mut svc, &env, Duration::from_secs(120));
    assert!(!status.success(), "the failpoint kills the service");
    let log = std::fs::read_to_string(env.dir.path().join("gap-killed.log")).expect("log");
    assert!(log.contains("failpoint kill-after-commit"), "{}", log_tail(&env, "gap-killed"));
    let committed = common::committed_total(&env, "gap", "payments");
    assert!(committed > 0 && committed < 30_000, "killed mid-run: {committed} of 30000 committed");

    // The store holds the 2nd commit, the group's offsets the 3rd: the state comes from the
    // changelog.
    let mut svc = Service::start(&env, &cfg, "gap");
    common::wait_ready(&cfg, Duration::from_secs(120));
    env.wait_caught_up("gap", "payments", Duration::from_secs(300));
    assert!(svc.stop().success(), "{}", log_tail(&env, "gap"));
    let log = std::fs::read_to_string(env.dir.path().join("gap.log")).expect("log");
    let restored = log.lines().find(|l| l.contains("partitions assigned and restored")).expect("a restore line");
    assert!(!restored.contains("from_changelog=0"), "restored from the changelog: {restored}");
    alerts_equal_replay(&env, &cfg, "gap", 0);
}

/// The broker stopped and started again mid-run (after the first 2,000 records are committed,
/// most still to come) while the service commits every 10 ms. The development broker loses the
/// records an open transaction had written (acknowledged) when it restarts, yet commits the
/// transaction afterwards; the service therefore never commits a transaction during which a
/// broker connection went down (it aborts and redoes it), and replaces a producer whose
/// sequence numbers the restarted broker no longer knows.
#[test]
fn a_broker_restart_while_committing_every_10ms_changes_nothing() {
    const RECORDS: usize = 100_000;
    let env = DevEnv::start();
    if !env.can_restart_broker() {
        eprintln!("an external broker cannot be restarted by the test: skipped");
        return;
    }
    let cfg = write_config(env.dir.path(), "bounce", "a", "10ms", "");
    // Enough records that the service is still reading them when the broker goes down (it
    // takes a second or more to stop).
    produce_payments(&env, &cfg, "events.jsonl", &common::payments(RECORDS, 1_000, 36), "4");
    let mut svc = Service::start(&env, &cfg, "bounce");
    common::wait_ready(&cfg, Duration::from_secs(120));
    let start = Instant::now();
    let mut before = 0;
    while before < 2_000 {
        assert!(start.elapsed() < Duration::from_secs(120), "no commits:\n{}", log_tail(&env, "bounce"));
        std::thread::sleep(Duration::from_millis(20));
        before = common::committed_total(&env, "bounce", "payments");
    }
    env.restart_broker();
    let start = Instant::now();
    while !env.caught_up("bounce", "payments") {
        if let Some(status) = svc.exited() {
            panic!("the service exited ({status}) after the broker restart:\n{}", log_tail(&env, "bounce"));
        }
        assert!(start.elapsed() < Duration::from_secs(300), "no catch-up:\n{}", log_tail(&env, "bounce"));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(svc.stop().success(), "{}", log_tail(&env, "bounce"));
    assert!(before < RECORDS as i64, "restarted mid-run: {before} of {RECORDS} records committed");
    let n = alerts_equal_replay(&env, &cfg, "bounce", 0);
    let log = std::fs::read_to_string(env.dir.path().join("bounce.log")).unwrap_or_default();
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    let (aborted, lost, intact) = (
        count("aborting and rewinding"),
        count("committed transaction was lost"),
        count("the transaction's records are there"),
    );
    eprintln!(
        "broker restarted after {before} committed records; {n} alerts, as the replay. The service: {aborted} \
         transaction(s) aborted, {lost} committed transaction(s) found lost and redone, {intact} found intact, {} \
         rewind(s) from the changelog",
        count("restoring from the changelog"),
    );
    assert!(
        aborted + lost + intact > 0,
        "the broker went down while the service was idle:\n{}",
        log_tail(&env, "bounce")
    );
}

#[test]
fn a_restore_longer_than_the_poll_interval_keeps_the_group() {
    let env = DevEnv::start();
    // The consumer must poll at least every 7 s to stay in the group.
    let props = "[kafka.properties]\n\"max.poll.interval.ms\" = \"7000\"\n\"session.timeout.ms\" = \"6000\"\n";
    let cfg = write_config(env.dir.path(), "slow", "a", "50ms", "");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(&cfg, text.replace("[kafka]\n", &format!("{props}\n[kafka]\n"))).expect("config");
    produce_payments(&env, &cfg, "first.jsonl", &common::payments(3_000, 200, 37), "2");
    let mut svc = Service::start(&env, &cfg, "slow-first");
    env.wait_caught_up("slow", "payments", Duration::from_secs(300));
    assert!(svc.stop().success(), "{}", log_tail(&env, "slow-first"));

    // The local store is gone: the state comes from the changelog, slowly.
    std::fs::remove_dir_all(env.dir.path().join("state-slow-a")).expect("state dir removed");
    produce_payments(
        &env,
        &cfg,
        "second.jsonl",
        &common::payments_from(3_000, 200, 38, common::START + 300_000, "S"),
        "2",
    );
    let mut svc = Service::start_with(&env, &cfg, "slow", &[("TRIPLINE_FAILPOINTS", "slow-restore:12000")]);
    env.wait_caught_up("slow", "payments", Duration::from_secs(300));
    assert!(svc.stop().success(), "{}", log_tail(&env, "slow"));
    let log = std::fs::read_to_string(env.dir.path().join("slow.log")).expect("log");
    let restores: Vec<&str> = log.lines().filter(|l| l.contains("partitions assigned and restored")).collect();
    assert_eq!(restores.len(), 1, "one assignment, one restore, no rebalance:\n{}", log_tail(&env, "slow"));
    let ms: u64 = restores[0]
        .split("ms=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("ms in the restore line");
    assert!(ms >= 12_000, "the restore took longer than the poll interval: {}", restores[0]);
    assert!(!log.contains("maximum poll interval"), "{}", log_tail(&env, "slow"));
    alerts_equal_replay(&env, &cfg, "slow", 0);
}

/// The group's offsets moved ahead of the state while no instance ran (as a broker that lost
/// transactions but kept their offsets leaves them, or by hand): the partitions go on from
/// their state, the consumer sought there, and no record is skipped.
#[test]
fn offsets_ahead_of_the_state_do_not_skip_records() {
    let env = DevEnv::start();
    let cfg = write_config(env.dir.path(), "ahead", "a", "50ms", "");
    produce_payments(&env, &cfg, "first.jsonl", &common::payments(3_000, 100, 39), "2");
    let mut svc = Service::start(&env, &cfg, "ahead-first");
    env.wait_caught_up("ahead", "payments", Duration::from_secs(300));
    assert!(svc.stop().success(), "{}", log_tail(&env, "ahead-first"));
    produce_payments(
        &env,
        &cfg,
        "second.jsonl",
        &common::payments_from(3_000, 100, 40, common::START + 300_000, "S"),
        "2",
    );
    // The group's offsets jump to the end of the topic, past the second batch.
    let c = env.consumer("ahead");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..2 {
        let (_, hi) = c.fetch_watermarks("payments", p, Duration::from_secs(10)).expect("watermarks");
        tpl.add_partition_offset("payments", p, rdkafka::Offset::Offset(hi)).expect("offset");
    }
    c.assign(&tpl).expect("assigned");
    c.commit(&tpl, CommitMode::Sync).expect("offsets moved ahead");
    drop(c);
    let mut svc = Service::start(&env, &cfg, "ahead");
    common::wait_ready(&cfg, Duration::from_secs(120));
    // Caught up means committed to the end, which the moved offsets already say: wait until
    // the second batch's alerts are in instead.
    let start = Instant::now();
    let log = || std::fs::read_to_string(env.dir.path().join("ahead.log")).unwrap_or_default();
    while !log().contains("going on from the state") {
        assert!(start.elapsed() < Duration::from_secs(120), "{}", log_tail(&env, "ahead"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let expected = common::export_and_replay(&env, &cfg, 0).len();
    while env.committed(&cfg, "ahead.alerts").len() < expected {
        assert!(start.elapsed() < Duration::from_secs(300), "{}", log_tail(&env, "ahead"));
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(svc.stop().success(), "{}", log_tail(&env, "ahead"));
    alerts_equal_replay(&env, &cfg, "ahead", 0);
}
