//! The audit report of a replay (`--report`, Markdown or JSON) and the comparison of two pattern
//! sets over the same records (`--compare`).
//!
//! Everything in a report follows from the input and the patterns: no wall-clock time, no host
//! name. Two replays of the same range with the same patterns write the same report, byte for
//! byte, and the alert digest can be checked without Tripline: it is the SHA-256 of the alert
//! lines sorted bytewise, each ending in a newline (`LC_ALL=C sort alerts.jsonl | sha256sum`),
//! so it does not depend on the order in which partitions were read either.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::compare::{table, Diff, DiffRow};
use crate::core::pattern_sets::{mode, PatternSet};
use crate::core::range::PartRange;
use crate::core::times;
use crate::obs::metrics::GIT_HASH;

/// What a runner counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub processed: u64,
    pub late: u64,
    /// Partial matches dropped by the per-key budget.
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    tripline: String,
    input: InputReport,
    events: Events,
    patterns: SetReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    compared_with: Option<SetReport>,
    /// Windows were left open at the end (the input goes on), as the running service's are.
    pub open_end: bool,
    alerts: Alerts,
    #[serde(skip_serializing_if = "Option::is_none")]
    comparison: Option<Vec<DiffRow>>,
    /// The partition the last record came from (an index into the input's partitions).
    #[serde(skip)]
    last: Option<usize>,
}

#[derive(Debug, Default, Serialize)]
struct InputReport {
    /// `kafka` or `file`.
    kind: String,
    /// The bootstrap servers, or the file.
    location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    partitions: Vec<InputPartition>,
}

/// One input partition (a topic's, or a stream's in a file).
#[derive(Clone, Debug, Default, Serialize)]
pub struct InputPartition {
    /// The topic (Kafka) or the stream (file).
    pub source: String,
    pub partition: i32,
    /// The requested offsets, `start..end` (Kafka).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_offset: Option<i64>,
    /// The first offset not read (Kafka): `end_offset` unless the committed records ended first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_to: Option<i64>,
    pub records: u64,
    pub first_offset: Option<i64>,
    pub last_offset: Option<i64>,
    /// Kafka record timestamps of the first and last record read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<String>,
    /// The earliest and latest event time among its events.
    pub min_event_time: Option<String>,
    pub max_event_time: Option<String>,
    /// (first, last) record timestamps.
    #[serde(skip)]
    times: Option<(i64, i64)>,
    #[serde(skip)]
    event_times: Option<(i64, i64)>,
}

#[derive(Debug, Default, Serialize)]
struct Events {
    read: u64,
    processed: u64,
    late: u64,
    dead_lettered: u64,
    dead_lettered_by_reason: BTreeMap<String, u64>,
    partial_matches_dropped_by_budget: u64,
}

#[derive(Debug, Serialize)]
struct SetReport {
    set: String,
    origin: String,
    patterns: Vec<PatternRow>,
}

#[derive(Debug, Serialize)]
struct PatternRow {
    name: String,
    version: u32,
    hash: String,
    severity: String,
    mode: String,
    stream: String,
}

#[derive(Debug, Default, Serialize)]
struct Alerts {
    total: u64,
    file: String,
    digest: String,
    digest_rule: String,
    by_pattern: Vec<AlertRow>,
}

#[derive(Debug, Serialize)]
struct AlertRow {
    pattern: String,
    version: u32,
    severity: String,
    mode: String,
    alerts: u64,
}

fn set_report(set: &PatternSet, origin: &str) -> SetReport {
    SetReport {
        set: set.hash(),
        origin: origin.to_owned(),
        patterns: set
            .nfas
            .iter()
            .map(|n| PatternRow {
                name: n.meta.name.clone(),
                version: n.meta.version,
                hash: n.meta.hash.clone(),
                severity: n.meta.severity.as_str().to_owned(),
                mode: mode(n).to_owned(),
                stream: n.meta.stream.clone(),
            })
            .collect(),
    }
}

/// The digest of alert lines: SHA-256 over the lines sorted bytewise, each with a newline.
pub fn digest(lines: &[String]) -> String {
    let mut sorted: Vec<&String> = lines.iter().collect();
    sorted.sort_unstable();
    let mut h = Sha256::new();
    for l in sorted {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    format!("sha256:{}", h.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl Report {
    pub fn new(set: &PatternSet, origin: &str) -> Report {
        Report {
            tripline: format!("{} ({})", env!("CARGO_PKG_VERSION"), GIT_HASH),
            input: InputReport::default(),
            events: Events::default(),
            patterns: set_report(set, origin),
            compared_with: None,
            open_end: false,
            alerts: Alerts::default(),
            comparison: None,
            last: None,
        }
    }

    pub fn compare_with(&mut self, set: &PatternSet, origin: &str) {
        self.compared_with = Some(set_report(set, origin));
    }

    pub fn input_file(&mut self, path: &Path) {
        self.input.kind = "file".into();
        self.input.location = path.display().to_string();
    }

    pub fn input_kafka(&mut self, bootstrap: &str, from: Option<&str>, to: Option<&str>, ranges: &[PartRange]) {
        self.input.kind = "kafka".into();
        self.input.location = bootstrap.to_owned();
        self.input.from = from.map(str::to_owned);
        self.input.to = to.map(str::to_owned);
        self.input.partitions = ranges
            .iter()
            .map(|r| InputPartition {
                source: r.topic.clone(),
                partition: r.partition,
                start_offset: Some(r.start),
                end_offset: Some(r.end),
                ..InputPartition::default()
            })
            .collect();
    }

    fn partition(&mut self, source: &str, partition: i32) -> &mut InputPartition {
        let ps = &mut self.input.partitions;
        // Records come partition by partition (Kafka) or mostly so (files): try the last one first.
        let hit = |p: &InputPartition| p.partition == partition && p.source == source;
        let i = match self.last.filter(|&i| ps.get(i).is_some_and(hit)).or_else(|| ps.iter().position(hit)) {
            Some(i) => i,
            None => {
                ps.push(InputPartition { source: source.to_owned(), partition, ..InputPartition::default() });
                ps.sort_by(|a, b| (&a.source, a.partition).cmp(&(&b.source, b.partition)));
                ps.iter().position(hit).unwrap_or(0)
            }
        };
        self.last = Some(i);
        &mut ps[i]
    }

    /// A record read at `offset` of `partition` of `source` (topic or stream).
    pub fn read(&mut self, source: &str, partition: i32, offset: i64, timestamp: Option<i64>, event_time: Option<i64>) {
        self.events.read += 1;
        let p = self.partition(source, partition);
        p.records += 1;
        p.first_offset.get_or_insert(offset);
        p.last_offset = Some(offset);
        if let Some(t) = timestamp {
            p.times.get_or_insert((t, t)).1 = t;
        }
        if let Some(t) = event_time {
            let (lo, hi) = p.event_times.get_or_insert((t, t));
            (*lo, *hi) = ((*lo).min(t), (*hi).max(t));
        }
    }

    /// Writes the times as text (once, before the report is written).
    fn finish_times(&mut self) {
        for p in &mut self.input.partitions {
            if let Some((first, last)) = p.times {
                (p.first_timestamp, p.last_timestamp) = (Some(times::format(first)), Some(times::format(last)));
            }
            if let Some((lo, hi)) = p.event_times {
                (p.min_event_time, p.max_event_time) = (Some(times::format(lo)), Some(times::format(hi)));
            }
        }
    }

    pub fn partition_done(&mut self, topic: &str, partition: i32, next: i64) {
        self.partition(topic, partition).read_to = Some(next);
    }

    pub fn dead_letter(&mut self, reason: &str) {
        self.events.dead_lettered += 1;
        *self.events.dead_lettered_by_reason.entry(reason.to_owned()).or_default() += 1;
    }

    pub fn events_read(&self) -> u64 {
        self.events.read
    }

    pub fn rejected(&self) -> u64 {
        self.events.dead_lettered
    }

    pub fn digest(&self) -> &str {
        &self.alerts.digest
    }

    /// The alerts written to `file`, and the counts of the run that raised them.
    pub fn output(&mut self, file: &Path, lines: &[String], counts: &Counts) {
        self.finish_times();
        self.events.processed = counts.processed;
        self.events.late = counts.late;
        self.events.partial_matches_dropped_by_budget = counts.dropped;
        // Per pattern version (a replay across deploys runs several versions of a pattern).
        let mut per: BTreeMap<(String, u64), u64> = BTreeMap::new();
        for l in lines {
            let (pattern, version) = serde_json::from_str::<Json>(l)
                .ok()
                .map(|j| (j["pattern"].as_str().unwrap_or_default().to_owned(), j["version"].as_u64().unwrap_or(0)))
                .unwrap_or_default();
            *per.entry((pattern, version)).or_default() += 1;
        }
        self.alerts = Alerts {
            total: lines.len() as u64,
            file: file.display().to_string(),
            digest: digest(lines),
            digest_rule: "SHA-256 of the alert lines sorted bytewise, each ending in a newline: \
                          LC_ALL=C sort FILE | sha256sum"
                .to_owned(),
            by_pattern: self
                .patterns
                .patterns
                .iter()
                .map(|p| AlertRow {
                    pattern: p.name.clone(),
                    version: p.version,
                    severity: p.severity.clone(),
                    mode: p.mode.clone(),
                    alerts: per.get(&(p.name.clone(), u64::from(p.version))).copied().unwrap_or(0),
                })
                .collect(),
        };
    }

    /// Alerts per pattern (for the summary).
    pub fn alerts_by_pattern(&self) -> Vec<(String, u64)> {
        self.alerts.by_pattern.iter().map(|r| (r.pattern.clone(), r.alerts)).collect()
    }

    pub fn comparison(&mut self, diff: Diff) {
        self.comparison = Some(diff.rows());
    }

    pub fn json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let i = &self.input;
        let _ = writeln!(s, "# Tripline replay report\n");
        let _ = writeln!(s, "Tripline {}.\n", self.tripline);
        let _ = writeln!(s, "## Input\n");
        let _ = writeln!(s, "- source: {} `{}`", i.kind, i.location);
        if let Some(f) = &i.from {
            let _ = writeln!(s, "- from: `{f}`");
        }
        if let Some(t) = &i.to {
            let _ = writeln!(s, "- to: `{t}`");
        }
        let _ = writeln!(
            s,
            "- windows at the end: {}\n",
            if self.open_end { "left open (the input goes on, as the service's does)" } else { "closed" }
        );
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
        let num = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let _ = writeln!(
            s,
            "| topic/stream | partition | offsets requested | records | first offset | last offset | first timestamp | last timestamp | event times |"
        );
        let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---|---|---|");
        for p in &i.partitions {
            let requested = match (p.start_offset, p.end_offset) {
                (Some(a), Some(b)) => format!("{a}..{b}"),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {requested} | {} | {} | {} | {} | {} | {} .. {} |",
                p.source,
                p.partition,
                p.records,
                num(p.first_offset),
                num(p.last_offset),
                opt(&p.first_timestamp),
                opt(&p.last_timestamp),
                opt(&p.min_event_time),
                opt(&p.max_event_time)
            );
        }
        let e = &self.events;
        let _ = writeln!(s, "\n## Events\n");
        let _ = writeln!(s, "| read | processed | late | dead-lettered | partial matches dropped by the budget |");
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            e.read, e.processed, e.late, e.dead_lettered, e.partial_matches_dropped_by_budget
        );
        if !e.dead_lettered_by_reason.is_empty() {
            let reasons: Vec<String> = e.dead_lettered_by_reason.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            let _ = writeln!(s, "\nDead-lettered by reason: {}.", reasons.join(", "));
        }
        for (title, set) in [("Patterns", Some(&self.patterns)), ("Compared with", self.compared_with.as_ref())] {
            let Some(set) = set else { continue };
            let _ = writeln!(s, "\n## {title}\n");
            let _ = writeln!(s, "Set `{}`, {}.\n", set.set, set.origin);
            let _ = writeln!(s, "| pattern | version | hash | severity | mode | stream |");
            let _ = writeln!(s, "|---|---:|---|---|---|---|");
            for p in &set.patterns {
                let _ = writeln!(
                    s,
                    "| {} | {} | `{}` | {} | {} | {} |",
                    p.name, p.version, p.hash, p.severity, p.mode, p.stream
                );
            }
        }
        let a = &self.alerts;
        let _ = writeln!(s, "\n## Alerts\n");
        let _ = writeln!(s, "{} alert(s) in `{}`.\n", a.total, a.file);
        let _ = writeln!(s, "Digest: `{}`, the {}.\n", a.digest, a.digest_rule);
        let _ = writeln!(s, "| pattern | version | severity | mode | alerts |");
        let _ = writeln!(s, "|---|---:|---|---|---:|");
        for r in &a.by_pattern {
            let _ = writeln!(s, "| {} | {} | {} | {} | {} |", r.pattern, r.version, r.severity, r.mode, r.alerts);
        }
        if let Some(rows) = &self.comparison {
            let _ = writeln!(s, "\n## Comparison\n");
            let _ = writeln!(s, "Alerts by their match (pattern name, key, matched events).\n");
            s.push_str(&table(rows));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_ignores_order_and_is_what_sort_and_sha256sum_give() {
        let lines = vec!["b".to_owned(), "a".to_owned()];
        // printf 'a\nb\n' | sha256sum
        assert_eq!(digest(&lines), "sha256:911169ddaaf146aff539f58c26c489af3b892dff0fe283c1c264c65ae5aa59a2");
        assert_eq!(digest(&lines), digest(&["a".to_owned(), "b".to_owned()]));
        assert_ne!(digest(&lines), digest(&["a".to_owned()]));
    }
}
