//! The fleet through the pattern sets topic, against a real broker (`scripts/dev-up`): three
//! instances of one group follow `tripline deploy` while they work through a backlog, and
//! `tripline rollback` while every partition is quiet. Every partition switches; the time from
//! the command returning to the last partition's switch is reported (the goal is under 1 s).
//! One instance is killed (SIGKILL) and restarted while it works through the next batch.
//! Then a canary of the new version on 30% of the keys: each of its alerts is live on exactly
//! one version, by the key's bucket. Across the three deployments the committed alerts hold no
//! alert twice, and `tripline replay --as-recorded` over the topic gives exactly what the three
//! instances committed (live and shadow), byte for byte.

#![allow(clippy::print_stderr)] // the figures are the output

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{log_tail, wait_ready, write_config, DevEnv, Service, START};
use serde_json::Value;
use tripline_service::core::plan::key_bucket;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Runs a fleet command; its stderr (the published deployment) and the status it waited for.
fn fleet_command(env: &DevEnv, args: &[&str]) -> (String, i64) {
    let out = env.tripline().args(args).output().expect("runs");
    let returned = now_ms();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}\n{}", String::from_utf8_lossy(&out.stdout));
    (stderr, returned)
}

/// The status of the fleet once every partition runs the latest deployment.
fn switched(env: &DevEnv, config: &Path) -> Value {
    let c = config.display().to_string();
    let out =
        env.tripline().args(["status", "--config", &c, "--wait", "60", "--format", "json"]).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "not every partition switched:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&text).expect("status JSON")
}

/// The time from `returned` to the last partition's switch, in ms (negative when every
/// partition had switched before the command returned), and from the deployment's record (its
/// time is taken just before it is published).
fn last_switch(status: &Value, returned: i64) -> (i64, i64) {
    let parts = status["partitions"].as_array().expect("partitions");
    let last = parts.iter().filter_map(|p| p["since_ms"].as_i64()).max().expect("switched partitions");
    (last - returned, status["switched_in_ms"].as_i64().expect("every partition switched"))
}

/// `tripline replay --as-recorded` over the whole topic: its alert lines (it must end well and
/// warn of no watermark that differs from the service's).
fn replay_as_recorded(env: &DevEnv, config: &str) -> Vec<String> {
    let out = env
        .tripline()
        .args(["replay", "--config", config, "--as-recorded", "--output", "as-ran.jsonl"])
        .output()
        .expect("replay runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("warning"), "{stderr}");
    std::fs::read_to_string(env.dir.path().join("as-ran.jsonl")).expect("output").lines().map(str::to_owned).collect()
}

fn sorted(lines: &[String]) -> Vec<String> {
    let mut v = lines.to_vec();
    v.sort();
    v
}

#[test]
fn three_instances_follow_deploys_and_rollbacks_and_replay_reproduces_them() {
    let env = DevEnv::start();
    let dir = env.dir.path().to_owned();
    // Static membership, as the crash tests: a restarted instance takes its partitions back.
    let cfg = |i: &str| {
        let path = write_config(&dir, "fleet", i, "100ms", "");
        let text = std::fs::read_to_string(&path).expect("config");
        std::fs::write(&path, text.replace("group_id = \"fleet\"", "group_id = \"fleet\"\nstatic_membership = true"))
            .expect("config");
        path
    };
    let configs = [cfg("a"), cfg("b"), cfg("c")];
    let ca = configs[0].display().to_string();
    std::fs::write(dir.join("one.jsonl"), common::payments(30_000, 2_000, 21)).expect("batch one");
    env.run_ok(&["produce", "--config", &ca, "--input", "one.jsonl", "--partitions", "6"]);
    let mut services: Vec<Service> =
        ["a", "b", "c"].iter().zip(&configs).map(|(i, c)| Service::start(&env, c, &format!("fleet-{i}"))).collect();
    for c in &configs {
        wait_ready(c, Duration::from_secs(120));
    }

    // A changed structuring (band 8,500..10,000), deployed while the instances work through
    // the backlog.
    let files = common::with_changed_structuring(&dir);
    let mut deploy = vec!["deploy", "--config", &ca];
    deploy.extend(files.iter().map(String::as_str));
    let busy = !env.caught_up("fleet", "payments");
    let (said, returned) = fleet_command(&env, &deploy);
    assert!(said.contains("deployment d") && said.contains("structuring@2"), "{said}");
    let status = switched(&env, &configs[0]);
    let deploy_ms = last_switch(&status, returned);
    assert_eq!(status["partitions"].as_array().map(Vec::len), Some(6), "{status}");
    assert_eq!(status["pending"], 0);

    env.wait_caught_up("fleet", "payments", Duration::from_secs(300));
    std::fs::write(dir.join("two.jsonl"), common::payments_from(15_000, 2_000, 22, START + 30_000 * 50 + 10_000, "Q"))
        .expect("batch two");
    env.run_ok(&["produce", "--config", &ca, "--input", "two.jsonl"]);
    // SIGKILL one instance while it works through batch two (the old structuring may still be
    // draining): it restarts under the deployment, its draining versions restored.
    let killed_mid_run = !env.caught_up("fleet", "payments");
    services[1].kill9();
    services[1] = Service::start(&env, &configs[1], "fleet-b2");
    wait_ready(&configs[1], Duration::from_secs(120));
    env.wait_caught_up("fleet", "payments", Duration::from_secs(300));

    // Every partition is quiet: roll back to the set that ran before the deployment.
    let (said, returned) = fleet_command(&env, &["rollback", "--config", &ca]);
    assert!(said.contains("rollback d") && said.contains("structuring@1"), "{said}");
    let status = switched(&env, &configs[0]);
    let rollback_ms = last_switch(&status, returned);
    let text =
        String::from_utf8_lossy(&env.tripline().args(["status", "--config", &ca]).output().expect("status").stdout)
            .into_owned();
    assert!(text.contains("all 6 partitions run the deployed set"), "{text}");

    // A canary of the changed structuring, live on 30% of the keys (in shadow on the others,
    // where version 1 stays live), while quiet; batch three runs under it.
    let mut canary = vec!["deploy", "--config", &ca, "--canary", "30"];
    canary.extend(files.iter().map(String::as_str));
    let (said, returned) = fleet_command(&env, &canary);
    assert!(said.contains("canary deployment (30% of keys)"), "{said}");
    let status = switched(&env, &configs[0]);
    let canary_ms = last_switch(&status, returned);
    let third = START + 50_000 * 50;
    std::fs::write(dir.join("three.jsonl"), common::payments_from(6_000, 2_000, 23, third, "R")).expect("batch three");
    env.run_ok(&["produce", "--config", &ca, "--input", "three.jsonl"]);
    env.wait_caught_up("fleet", "payments", Duration::from_secs(300));
    let mut committed = env.committed(&configs[0], "fleet.alerts");
    committed.extend(env.committed(&configs[0], "tripline.alerts.shadow"));
    for s in &mut services {
        let name = s.name.clone();
        assert!(s.stop().success(), "{name}:\n{}", log_tail(&env, &name));
    }
    eprintln!(
        "the last of 6 partitions switched, after the command returned / after the deployment was published: \
         deploy (instances busy: {busy}) {} / {} ms; rollback (quiet partitions) {} / {} ms; canary {} / {} ms \
         (an instance was killed and restarted after the deploy, mid-run: {killed_mid_run})",
        deploy_ms.0, deploy_ms.1, rollback_ms.0, rollback_ms.1, canary_ms.0, canary_ms.1
    );

    // No alert twice; both versions of structuring alerted.
    let alerts: Vec<Value> = committed.iter().map(|l| serde_json::from_str(l).expect("alert JSON")).collect();
    let ids: BTreeSet<&str> = alerts.iter().filter_map(|a| a["alert_id"].as_str()).collect();
    assert_eq!(ids.len(), alerts.len(), "an alert was committed twice");
    let versions: BTreeSet<u64> =
        alerts.iter().filter(|a| a["pattern"] == "structuring").filter_map(|a| a["version"].as_u64()).collect();
    assert_eq!(versions, BTreeSet::from([1, 2]), "both versions of structuring alerted");
    // Under the canary each structuring alert is raised by both versions, live by one: version
    // 2 on the keys of its 30%, version 1 on the others.
    let mut live_by_version = [0usize; 3];
    for a in alerts.iter().filter(|a| a["pattern"] == "structuring" && a["ts"].as_i64() >= Some(third)) {
        let key = a["key"].as_str().expect("key");
        let v2 = a["version"] == 2;
        let live = a["mode"] == "live";
        assert_eq!(live, v2 == (key_bucket(key) < 3_000), "{a}");
        if live {
            live_by_version[if v2 { 2 } else { 1 }] += 1;
        }
    }
    assert!(live_by_version[1] > 0 && live_by_version[2] > 0, "both versions live on some keys: {live_by_version:?}");

    // The sets as the service switched them, replayed: exactly what it committed.
    let replayed = replay_as_recorded(&env, &ca);
    assert_eq!(sorted(&replayed), sorted(&committed), "replay across the deployments = the service, byte for byte");
}

/// A partition that moves to an instance running another set restores under the versions its
/// state names and switches there, as a deployment would: the replaced version drains instead
/// of being dropped as stale, and a replay of the recorded sets gives the committed alerts.
#[test]
fn a_partition_moving_to_an_instance_with_another_set_keeps_its_state() {
    let env = DevEnv::start();
    let dir = env.dir.path().to_owned();
    let a = write_config(&dir, "move", "a", "100ms", "");
    // Instance b runs a changed structuring from its own files (no deployment).
    let files = common::with_changed_structuring(&dir);
    let b = write_config(&dir, "move", "b", "100ms", "");
    let text = std::fs::read_to_string(&b).expect("config");
    let list = files.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join(", ");
    let start = text.find("patterns = [").expect("patterns");
    let end = start + text[start..].find(']').expect("end of the list") + 1;
    std::fs::write(&b, format!("{}patterns = [{list}]{}", &text[..start], &text[end..])).expect("config");
    let ca = a.display().to_string();
    std::fs::write(dir.join("one.jsonl"), common::payments(20_000, 2_000, 31)).expect("batch one");
    env.run_ok(&["produce", "--config", &ca, "--input", "one.jsonl", "--partitions", "6"]);
    let mut sa = Service::start(&env, &a, "move-a");
    env.wait_caught_up("move", "payments", Duration::from_secs(300));
    // b joins: half the partitions move to it, their state (made under a's set) from the changelog.
    let mut sb = Service::start(&env, &b, "move-b");
    wait_ready(&b, Duration::from_secs(120));
    std::fs::write(dir.join("two.jsonl"), common::payments_from(10_000, 2_000, 32, START + 20_000 * 50 + 10_000, "Q"))
        .expect("batch two");
    env.run_ok(&["produce", "--config", &ca, "--input", "two.jsonl"]);
    env.wait_caught_up("move", "payments", Duration::from_secs(300));
    let mut committed = env.committed(&a, "move.alerts");
    committed.extend(env.committed(&a, "tripline.alerts.shadow"));
    for (s, name) in [(&mut sa, "move-a"), (&mut sb, "move-b")] {
        assert!(s.stop().success(), "{name}:\n{}", log_tail(&env, name));
    }
    let log = std::fs::read_to_string(dir.join("move-b.log")).expect("log");
    assert!(log.contains("partitions assigned and restored"), "b took partitions:\n{log}");
    assert!(!log.contains("is not read"), "no state dropped as stale:\n{log}");
    assert!(log.contains("replaced pattern versions finish their partial matches"), "{log}");
    let replayed = replay_as_recorded(&env, &ca);
    assert_eq!(sorted(&replayed), sorted(&committed), "replay of both instances' sets = the service, byte for byte");
    let versions: BTreeSet<u64> = committed
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON"))
        .filter(|a| a["pattern"] == "structuring")
        .filter_map(|a| a["version"].as_u64())
        .collect();
    assert_eq!(versions, BTreeSet::from([1, 2]), "both instances' structuring alerted");
}
