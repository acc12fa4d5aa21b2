//! The fleet, through the pattern sets topic: `tripline deploy` checks, compiles and publishes a
//! pattern set as a deployment that every instance of the consumer group follows;
//! `tripline rollback` publishes an earlier recorded set again; `tripline status` shows which
//! set each partition and instance runs, and since where.
//!
//! A deployment is a record of the pattern sets topic (`reason` `deploy` or `rollback`, the
//! sources, no positions, `deployment: {id, group}`). Each instance reads it and switches all its
//! partitions at its next transaction boundary, recording an activation (`reason: "switch"`)
//! with the offset and watermark of each partition: the same record a replay follows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, Producer};
use serde::Serialize;

use crate::core::config::Config;
use crate::core::pattern_sets::{self, compile_files, latest_deployment, Activation, Deployment, PatternSet};
use crate::core::plan::{build_plans, LiveKeys, BUCKETS};
use crate::core::times;
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::{kafka, reader};
use crate::obs::{now_ms, out};

/// A deployment as published.
#[derive(Debug)]
pub struct Published {
    pub record: Activation,
    /// The pattern sets topic.
    pub topic: String,
    pub exposure: Exposure,
}

impl Published {
    /// One line for people: what was published, for whom, and how to follow it.
    pub fn summary(&self) -> String {
        let r = &self.record;
        let versions: Vec<String> = r.patterns.iter().map(describe).collect();
        let id = r.deployment.as_ref().map_or("", |d| d.id.as_str());
        let kind = match (r.reason.as_str(), self.exposure) {
            ("rollback", _) => "rollback".to_owned(),
            (_, Exposure::Canary(bp)) => format!("canary deployment ({}% of keys)", f64::from(bp) / 100.0),
            (_, Exposure::Shadow) => "shadow deployment".to_owned(),
            _ => "deployment".to_owned(),
        };
        format!(
            "{kind} {id}: pattern set {} ({}) published to `{}` for group `{}`; each instance switches at its next \
             transaction boundary (`tripline status` shows each partition)\n",
            r.set,
            versions.join(", "),
            self.topic,
            r.group
        )
    }
}

/// How a deployment exposes its new versions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Exposure {
    /// Live on every key: the set replaces the running one.
    Full,
    /// Live on this share of the keys (basis points, 1..=9999); the versions they replace stay
    /// live on the others. Each runs in shadow where the other is live.
    Canary(u16),
    /// In shadow on every key, beside the running versions (which stay live).
    Shadow,
}

/// Checks and compiles pattern files against the configured streams and publishes them as a
/// deployment for the config's consumer group (a canary or a shadow deployment runs them beside
/// the running set: see [`staged`]). Diagnostics go to stdout; a set with errors is not
/// published (an `Invalid` error).
pub fn deploy(config: Option<&Path>, paths: &[PathBuf], exposure: Exposure) -> Result<Published> {
    let (cfg, path) = super::load(config)?;
    let catalog = cfg.catalog(&path)?;
    let set = compile_files(paths, &catalog, &mut |d| out(&format!("{d}\n"))).map_err(|e| match e {
        pattern_sets::CompileError::Diagnostics(_) => Error::invalid(format!("{e}; nothing was deployed")),
        other => Error::from(other),
    })?;
    build_plans(&cfg.streams, &path, &catalog, &set.nfas, &cfg.kafka.group_id)?;
    let set = match exposure {
        Exposure::Full => set,
        _ => {
            let records = read(&cfg)?;
            let running = running_set(&records, &cfg.kafka.group_id, &cfg.outputs.pattern_sets_topic, &catalog)?
                .ok_or_else(|| {
                    Error::usage(format!(
                        "group `{}` runs no recorded set yet: a canary or shadow deployment needs one to run beside \
                         (deploy without --canary/--shadow first)",
                        cfg.kafka.group_id
                    ))
                })?;
            staged(&set, &running, exposure)?
        }
    };
    publish_with(&cfg, &set, "deploy", exposure)
}

/// The set the group runs: that of its latest deployment, or else of its instances' latest
/// activation (their pattern files).
fn running_set(records: &[Activation], group: &str, topic: &str, catalog: &dsl::Catalog) -> Result<Option<PatternSet>> {
    let latest = latest_deployment(records, group)
        .or_else(|| records.iter().rev().find(|a| !a.is_deployment() && a.group == group));
    latest.map(|a| pattern_sets::recorded(records, &a.set, topic, catalog).map(|r| r.set)).transpose()
}

/// `new` staged beside `running`: versions in both run as they are; a new version is live on
/// the canary's share of the keys (none for a shadow deployment) and the version of the same
/// name it replaces, like a version the new set removes, on the other keys (all of them for a
/// shadow deployment). Promote with a plain `deploy` of the new set, or `rollback`.
pub fn staged(new: &PatternSet, running: &PatternSet, exposure: Exposure) -> Result<PatternSet> {
    let (live_new, live_old) = match exposure {
        Exposure::Full => return Ok(new.clone()),
        Exposure::Canary(bp) => (LiveKeys { from: 0, to: bp }, LiveKeys { from: bp, to: BUCKETS }),
        Exposure::Shadow => (LiveKeys::NONE, LiveKeys::ALL),
    };
    if !running.live_keys.is_empty() {
        return Err(Error::usage(
            "the group runs a canary or shadow deployment: promote it (deploy its set without --canary/--shadow) \
             or roll it back first",
        ));
    }
    let has = |set: &PatternSet, hash: &str| set.nfas.iter().any(|n| n.meta.hash == hash);
    let mut staged = new.clone();
    for n in &new.nfas {
        if !has(running, &n.meta.hash) {
            staged.live_keys.insert(n.meta.hash.clone(), live_new);
        }
    }
    for (n, &file) in running.nfas.iter().zip(&running.file_of) {
        if has(new, &n.meta.hash) {
            continue;
        }
        staged.nfas.push(n.clone());
        staged.file_of.push(file + new.sources.len());
        if !live_old.is_all() {
            staged.live_keys.insert(n.meta.hash.clone(), live_old);
        }
    }
    staged.sources.extend(running.sources.iter().cloned());
    // Sorted by name, as a compiled set is.
    let mut order: Vec<usize> = (0..staged.nfas.len()).collect();
    order.sort_by(|&a, &b| staged.nfas[a].meta.name.cmp(&staged.nfas[b].meta.name));
    staged.nfas = order.iter().map(|&i| staged.nfas[i].clone()).collect();
    staged.file_of = order.iter().map(|&i| staged.file_of[i]).collect();
    Ok(staged)
}

/// Publishes an earlier recorded set again, as a deployment (`rollback`): `set` (a hash or a
/// unique prefix), or by default the most recent set of the group that is not the one it runs.
pub fn rollback(config: Option<&Path>, set: Option<&str>) -> Result<Published> {
    let (cfg, path) = super::load(config)?;
    let catalog = cfg.catalog(&path)?;
    let topic = &cfg.outputs.pattern_sets_topic;
    let records = read(&cfg)?;
    let group = &cfg.kafka.group_id;
    let target = match set {
        Some(s) => s.to_owned(),
        None => {
            let mine: Vec<&Activation> = records.iter().filter(|a| is_of(a, group)).collect();
            let current = latest_deployment(&records, group)
                .or(mine.last().copied())
                .ok_or_else(|| {
                    Error::usage(format!(
                        "group `{group}` has no pattern set recorded in `{topic}`: nothing to roll back"
                    ))
                })?
                .set
                .clone();
            mine.iter().rev().find(|a| a.set != current).map(|a| a.set.clone()).ok_or_else(|| {
                Error::usage(format!(
                    "group `{group}` never ran another set than {current}: nothing to roll back to (name one: \
                     tripline rollback SET)"
                ))
            })?
        }
    };
    let found = pattern_sets::recorded(&records, &target, topic, &catalog)?;
    build_plans(&cfg.streams, &path, &catalog, &found.set.nfas, &cfg.kafka.group_id)?;
    publish_with(&cfg, &found.set, "rollback", Exposure::Full)
}

/// `name@version`, with the keys it is live on when not every key.
fn describe(p: &pattern_sets::PatternEntry) -> String {
    match p.live_keys {
        Some(l) if l == LiveKeys::NONE => format!("{}@{} in shadow", p.name, p.version),
        Some(l) => format!("{}@{} {l}", p.name, p.version),
        None => format!("{}@{}", p.name, p.version),
    }
}

/// Whether a record is of consumer group `group`: a deployment for it, or an instance's
/// activation in it.
fn is_of(a: &Activation, group: &str) -> bool {
    a.deployment_for(group).is_some() || (!a.is_deployment() && a.group == group)
}

/// Every record of the pattern sets topic, in order (committed ones).
fn read(cfg: &Config) -> Result<Vec<Activation>> {
    let topic = &cfg.outputs.pattern_sets_topic;
    let r = reader::reader(cfg)?;
    let mut records = Vec::new();
    for (p, o, bytes) in reader::read_all(&r, cfg, topic)? {
        match serde_json::from_slice::<Activation>(&bytes) {
            Ok(a) => records.push(a),
            Err(e) => tracing::warn!("{topic}/{p}@{o} is not a pattern set record: {e}"),
        }
    }
    Ok(records)
}

/// Publishes `set` as a deployment (`reason`: deploy or rollback) and waits for the broker.
fn publish_with(cfg: &Config, set: &PatternSet, reason: &str, exposure: Exposure) -> Result<Published> {
    use std::hash::{BuildHasher, Hasher};
    let topic = cfg.outputs.pattern_sets_topic.clone();
    kafka::ensure_topics(cfg, &[(topic.clone(), 1, false)])?;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    let at = now_ms();
    let salt = std::collections::hash_map::RandomState::new().build_hasher().finish() & 0xff_ffff;
    let deployment = Deployment {
        id: format!("d{at}-{salt:06x}"),
        group: cfg.kafka.group_id.clone(),
        canary_bp: match exposure {
            Exposure::Canary(bp) => Some(bp),
            _ => None,
        },
        shadow: exposure == Exposure::Shadow,
    };
    let mut record = set.activation(reason, &format!("tripline {reason} by {user}@{host}"), at, Vec::new());
    record.deployment = Some(deployment);
    record.group = cfg.kafka.group_id.clone();
    let bytes = serde_json::to_vec(&record).or_fail(Kind::Failed, "cannot encode the deployment")?;
    let mut client = kafka::client_config(cfg)?;
    client.set("enable.idempotence", "true").set("acks", "all");
    let producer: BaseProducer =
        kafka::create(cfg, &client, rdkafka::producer::DefaultProducerContext, "deployment producer")?;
    let key = set.hash();
    kafka::produce(&producer, &topic, Some(0), Some(key.as_bytes()), Some(&bytes), None)?;
    producer
        .flush(Duration::from_secs(30))
        .or_fail_with(Kind::Failed, || format!("the deployment was not written to `{topic}`"))?;
    Ok(Published { record, topic, exposure })
}

/// Where the fleet is: the deployment, and per input partition the set it runs.
#[derive(Debug, Serialize)]
pub struct Fleet {
    pub group: String,
    pub topic: String,
    /// The latest deployment for the group.
    pub deployment: Option<DeploymentRow>,
    /// Per input partition of the sets' streams, in order.
    pub partitions: Vec<PartitionRow>,
    /// Per instance: the set of its latest activation, and since when.
    pub instances: Vec<InstanceRow>,
    /// Partitions that do not run the deployed set yet.
    pub pending: usize,
    /// With a deployment that every partition runs: the time from the deployment to the last
    /// partition's switch, in ms.
    pub switched_in_ms: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct DeploymentRow {
    pub id: String,
    pub reason: String,
    pub set: String,
    pub patterns: Vec<String>,
    pub by: String,
    pub at_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct PartitionRow {
    pub topic: String,
    pub partition: i32,
    /// The set of the partition's latest activation (`None`: none recorded).
    pub set: Option<String>,
    pub instance: Option<String>,
    pub reason: Option<String>,
    /// Where it took effect: the first offset read under it, and the watermark then.
    pub offset: Option<i64>,
    pub watermark: Option<i64>,
    pub since_ms: Option<i64>,
    /// Whether it runs the latest deployment (true when there is none).
    pub current: bool,
}

#[derive(Debug, Serialize)]
pub struct InstanceRow {
    pub instance: String,
    pub set: String,
    pub reason: String,
    pub since_ms: i64,
    pub deployment: Option<String>,
}

/// Reads the pattern sets topic: where the config's group is.
pub fn status(config: Option<&Path>) -> Result<Fleet> {
    let (cfg, _) = super::load(config)?;
    let records = read(&cfg)?;
    let group = cfg.kafka.group_id.clone();
    let deployment = latest_deployment(&records, &group).map(|a| DeploymentRow {
        id: a.deployment.as_ref().map(|d| d.id.clone()).unwrap_or_default(),
        reason: a.reason.clone(),
        set: a.set.clone(),
        patterns: a.patterns.iter().map(describe).collect(),
        by: a.instance.clone(),
        at_ms: a.activated_at_ms,
    });
    // The latest activation per partition and per instance.
    let mut latest: BTreeMap<(String, i32), &Activation> = BTreeMap::new();
    let mut instances: BTreeMap<String, &Activation> = BTreeMap::new();
    for a in records.iter().filter(|a| !a.is_deployment() && a.group == group) {
        instances.insert(a.instance.clone(), a);
        for p in &a.positions {
            latest.insert((p.topic.clone(), p.partition), a);
        }
    }
    // Every partition of the topics the group reads (a partition no instance took yet is pending).
    let mut topics: Vec<String> = latest.keys().map(|(t, _)| t.clone()).collect();
    if let Some(d) = latest_deployment(&records, &group) {
        for p in &d.patterns {
            if let Some(s) = cfg.streams.get(&p.stream) {
                topics.push(s.topic.clone());
            }
        }
    }
    topics.sort();
    topics.dedup();
    let r = reader::reader(&cfg)?;
    let counts = reader::partitions(&r, &cfg, &topics.iter().map(String::as_str).collect::<Vec<_>>())?;
    let deployed = latest_deployment(&records, &group).and_then(|a| a.deployment.as_ref()).map(|d| d.id.clone());
    let mut partitions = Vec::new();
    for (t, n) in topics.iter().zip(counts) {
        for p in 0..n {
            let a = latest.get(&(t.clone(), p));
            let pos = a.and_then(|a| a.positions.iter().find(|x| &x.topic == t && x.partition == p));
            let current = match &deployed {
                None => true,
                Some(id) => a.is_some_and(|a| a.deployment.as_ref().is_some_and(|d| &d.id == id)),
            };
            partitions.push(PartitionRow {
                topic: t.clone(),
                partition: p,
                set: a.map(|a| a.set.clone()),
                instance: a.map(|a| a.instance.clone()),
                reason: a.map(|a| a.reason.clone()),
                offset: pos.map(|x| x.offset),
                watermark: pos.and_then(|x| x.watermark),
                since_ms: a.map(|a| a.activated_at_ms),
                current,
            });
        }
    }
    let pending = partitions.iter().filter(|p| !p.current).count();
    let switched_in_ms = match (&deployment, pending) {
        (Some(d), 0) => partitions.iter().filter_map(|p| p.since_ms).max().map(|last| last - d.at_ms),
        _ => None,
    };
    let instances = instances
        .into_values()
        .map(|a| InstanceRow {
            instance: a.instance.clone(),
            set: a.set.clone(),
            reason: a.reason.clone(),
            since_ms: a.activated_at_ms,
            deployment: a.deployment.as_ref().map(|d| d.id.clone()),
        })
        .collect();
    Ok(Fleet {
        group,
        topic: cfg.outputs.pattern_sets_topic.clone(),
        deployment,
        partitions,
        instances,
        pending,
        switched_in_ms,
    })
}

/// [`status`] until every partition runs the latest deployment, or `limit` passed (then the
/// last status, with partitions pending).
pub fn wait(config: Option<&Path>, limit: Duration) -> Result<Fleet> {
    let started = Instant::now();
    loop {
        let fleet = status(config)?;
        if fleet.pending == 0 || started.elapsed() >= limit {
            return Ok(fleet);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Fleet {
    /// For people: the deployment, a table of partitions, one line per instance, the verdict.
    pub fn text(&self) -> String {
        let mut s = format!("group `{}` (pattern sets topic `{}`)\n", self.group, self.topic);
        match &self.deployment {
            Some(d) => {
                let _ = writeln!(
                    s,
                    "{} {} at {} ({}): set {} ({})",
                    d.reason,
                    d.id,
                    times::format(d.at_ms),
                    d.by,
                    d.set,
                    d.patterns.join(", ")
                );
            }
            None => s.push_str("no deployment: each instance runs its pattern files\n"),
        }
        let _ = writeln!(
            s,
            "\n{:<24} {:<17} {:<12} {:<8} {:>10} {:<24} {:<24}",
            "partition", "set", "instance", "reason", "offset", "watermark", "since"
        );
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        for p in &self.partitions {
            let _ = writeln!(
                s,
                "{:<24} {:<17} {:<12} {:<8} {:>10} {:<24} {:<24}{}",
                format!("{}/{}", p.topic, p.partition),
                opt(&p.set),
                opt(&p.instance),
                opt(&p.reason),
                p.offset.map_or("-".into(), |o| o.to_string()),
                p.watermark.map_or("-".into(), times::format),
                p.since_ms.map_or("-".into(), times::format),
                if p.current { "" } else { "  (pending)" }
            );
        }
        if !self.instances.is_empty() {
            s.push('\n');
        }
        for i in &self.instances {
            let _ = writeln!(
                s,
                "instance {}: set {} since {} ({}{})",
                i.instance,
                i.set,
                times::format(i.since_ms),
                i.reason,
                i.deployment.as_ref().map_or(String::new(), |d| format!(", deployment {d}"))
            );
        }
        let total = self.partitions.len();
        match (&self.deployment, self.switched_in_ms) {
            (Some(_), Some(ms)) => {
                let _ = writeln!(
                    s,
                    "\nall {total} partitions run the deployed set; the last switched {:.3} s after the deployment",
                    ms as f64 / 1000.0
                );
            }
            (Some(_), None) => {
                let _ = writeln!(s, "\n{} of {total} partitions do not run the deployed set yet", self.pending);
            }
            (None, _) => {}
        }
        s
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library's `names` patterns compiled, `edit` applied to each source.
    fn set(names: &[&str], edit: &dyn Fn(&str, String) -> String) -> PatternSet {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cfg = Config::load(&root.join("tripline.toml")).expect("config");
        let catalog = cfg.catalog(&root.join("tripline.toml")).expect("catalog");
        let sources = names
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(root.join(format!("patterns/{n}.tl"))).expect("pattern");
                dsl::SourceFile::new(format!("{n}.tl"), edit(n, text))
            })
            .collect();
        pattern_sets::compile_sources(sources, 0, &catalog, &mut |d| panic!("{d}")).expect("compiles")
    }

    fn live(s: &PatternSet, name: &str, version: u32) -> LiveKeys {
        let n = s.nfas.iter().find(|n| n.meta.name == name && n.meta.version == version).expect("the version");
        s.live_keys.get(&n.meta.hash).copied().unwrap_or(LiveKeys::ALL)
    }

    #[test]
    fn a_staged_set_runs_changed_versions_beside_the_ones_they_replace() {
        let running = set(&["structuring", "rapid_movement", "mule_fan_in"], &|_, t| t);
        // structuring changed, rapid_movement as it is, mule_fan_in removed, mule_fan_out added.
        let new = set(&["structuring", "rapid_movement", "mule_fan_out"], &|n, t| {
            if n == "structuring" {
                t.replacen("version 1", "version 7", 1)
            } else {
                t
            }
        });
        let canary = staged(&new, &running, Exposure::Canary(1_000)).expect("staged");
        let names: Vec<(&str, u32)> = canary.nfas.iter().map(|n| (n.meta.name.as_str(), n.meta.version)).collect();
        assert_eq!(
            names,
            vec![
                ("mule_fan_in", 1),
                ("mule_fan_out", 1),
                ("rapid_movement", 2),
                ("structuring", 7),
                ("structuring", 1)
            ]
        );
        let (share, rest) = (LiveKeys { from: 0, to: 1_000 }, LiveKeys { from: 1_000, to: BUCKETS });
        assert_eq!(live(&canary, "structuring", 7), share, "the new version on the canary's keys");
        assert_eq!(live(&canary, "structuring", 1), rest, "the old one on the others");
        assert_eq!(live(&canary, "mule_fan_out", 1), share, "an added pattern too");
        assert_eq!(live(&canary, "mule_fan_in", 1), rest, "a removed one stays on the others");
        assert_eq!(live(&canary, "rapid_movement", 2), LiveKeys::ALL, "an unchanged one everywhere");
        assert_ne!(canary.hash(), set_hash_of(&canary), "the live keys are part of the set's hash");
        // Every file of both sets is kept, and each pattern points at its own.
        for (n, &f) in canary.nfas.iter().zip(&canary.file_of) {
            assert!(canary.sources[f].1.contains(&format!("version {}", n.meta.version)), "{}", n.meta.name);
        }

        let shadow = staged(&new, &running, Exposure::Shadow).expect("staged");
        assert_eq!(live(&shadow, "structuring", 7), LiveKeys::NONE);
        assert_eq!(live(&shadow, "structuring", 1), LiveKeys::ALL);
        assert_eq!(live(&shadow, "mule_fan_in", 1), LiveKeys::ALL);
        // A canary on top of a canary is refused: promote or roll back first.
        let err = staged(&new, &canary, Exposure::Canary(500)).expect_err("refused").to_string();
        assert!(err.contains("promote it"), "{err}");
    }

    fn set_hash_of(s: &PatternSet) -> String {
        pattern_sets::set_hash(&s.nfas)
    }
}
