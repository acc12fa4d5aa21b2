//! Reference tables in the service (docs/service.md, "Reference data"): file tables read at
//! start, topic tables read from their compacted topics from the beginning (the start waits
//! until they are read to their ends) and followed while running. A change is installed only
//! between transactions, into every partition at once, and recorded in the context topic (see
//! `core::context`): the version (its changes; an instance's first version, and the one after
//! a rewind, whole) and which partitions use it from which offset, so a replay reads each record
//! with the tables the service read it with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{RefData, RefTable, TableKind, Value};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value as Json;

use super::Worker;
use crate::core::config::{Config, TableConfig};
use crate::core::context::{self, version_records, Record, TableChange};
use crate::core::tables;
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::reader::{self, Reader};
use crate::obs::now_ms;

/// Entries per context record (records stay well under the broker's record size).
const ENTRIES_PER_RECORD: usize = 5_000;

/// The service's reference tables.
pub(super) struct Tables {
    configs: BTreeMap<String, TableConfig>,
    /// What the partitions read, and its version id.
    current: RefData,
    current_id: String,
    /// What was read since, not installed yet, and how each table changed (key to its last
    /// value, `None`: removed).
    pending: RefData,
    changed: BTreeMap<String, BTreeMap<String, (Json, Option<Json>)>>,
    /// Version ids are `<instance>@<start ms>:<n>`.
    incarnation: String,
    n: u64,
    /// The first version's records are written with the first assignment.
    first_recorded: bool,
    /// The consumer of the topic tables (by topic, the table's name).
    consumer: Option<Reader>,
    topics: HashMap<String, String>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables").field("current", &self.current_id).field("topics", &self.topics).finish()
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => s.to_string(),
        other => other.to_string(),
    }
}

impl Tables {
    /// Reads every table: files, then topics to their ends (waiting for them, with progress in
    /// the log).
    pub(super) fn start(cfg: &Config, config_path: &std::path::Path) -> Result<Tables> {
        let mut pending = tables::load(cfg, config_path)?;
        let mut t = Tables {
            configs: cfg.tables.clone(),
            current: RefData::default(),
            current_id: String::new(),
            pending: RefData::default(),
            changed: BTreeMap::new(),
            incarnation: format!("{}@{}", cfg.service.instance_id, now_ms()),
            n: 0,
            first_recorded: false,
            consumer: None,
            topics: HashMap::new(),
        };
        let topics: Vec<(String, String)> =
            cfg.tables.iter().filter_map(|(name, c)| c.topic.clone().map(|topic| (topic, name.clone()))).collect();
        if !topics.is_empty() {
            let consumer = reader::reader(cfg)?;
            let mut tpl = TopicPartitionList::new();
            let mut ends = HashMap::new();
            for (topic, name) in &topics {
                let n = reader::partitions(&consumer, cfg, &[topic.as_str()])
                    .map_err(|e| e.context(format!("table `{name}` reads topic `{topic}`")))?[0];
                for p in 0..n {
                    tpl.add_partition_offset(topic, p, Offset::Beginning).or_fail(Kind::Failed, "table topics")?;
                    let (_, hi) = consumer
                        .fetch_watermarks(topic, p, Duration::from_secs(10))
                        .or_fail_with(Kind::Failed, || format!("the end of table topic {topic}/{p}"))?;
                    ends.insert((topic.clone(), p), hi);
                }
            }
            consumer.assign(&tpl).or_fail(Kind::Failed, "cannot read the table topics")?;
            t.topics = topics.into_iter().collect();
            t.consumer = Some(consumer);
            // To their ends: the first records are read with the tables as they are now.
            let started = Instant::now();
            let mut logged = Instant::now();
            let mut read = 0u64;
            loop {
                read += t.poll(&mut pending, Duration::from_millis(100))?;
                let positions =
                    t.consumer.as_ref().map(|c| c.position()).transpose().or_fail(Kind::Failed, "positions")?;
                let done = ends.iter().all(|((topic, p), &hi)| {
                    hi == 0
                        || positions
                            .as_ref()
                            .and_then(|l| l.find_partition(topic, *p))
                            .and_then(|e| e.offset().to_raw())
                            .is_some_and(|o| o >= hi)
                });
                if done {
                    break;
                }
                if logged.elapsed() >= Duration::from_secs(10) {
                    tracing::info!(
                        records = read,
                        secs = started.elapsed().as_secs(),
                        "reading the reference table topics"
                    );
                    logged = Instant::now();
                }
            }
            tracing::info!(records = read, ms = started.elapsed().as_millis() as u64, "reference table topics read");
        }
        t.n = 1;
        t.current_id = format!("{}:1", t.incarnation);
        t.current = pending.clone();
        t.pending = pending;
        t.changed.clear();
        for name in t.current.names() {
            let size = t.current.get(name).map_or(0, |x| x.len());
            tracing::info!(table = name, entries = size, "reference table loaded");
        }
        Ok(t)
    }

    /// What the partitions read.
    pub(super) fn current(&self) -> &RefData {
        &self.current
    }

    /// Reads what the table topics have (at most a batch, waiting at most `wait` for the
    /// first) into `into` and the pending changes; the records read.
    fn poll(&mut self, into: &mut RefData, wait: Duration) -> Result<u64> {
        let Some(consumer) = &self.consumer else { return Ok(0) };
        let mut n = 0u64;
        let mut wait = wait;
        while n < 10_000 {
            let m = match consumer.poll(wait) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => continue,
                Some(Err(e)) => {
                    tracing::warn!("reading the reference table topics: {e}");
                    break;
                }
                Some(Ok(m)) => m,
            };
            wait = Duration::ZERO;
            n += 1;
            let Some(name) = self.topics.get(m.topic()) else { continue };
            let Some(cfg) = self.configs.get(name) else { continue };
            let change = match tables::change_of(cfg, m.key(), m.payload()) {
                Ok(c) => c,
                Err(why) => {
                    tracing::warn!(table = %name, topic = m.topic(), partition = m.partition(), offset = m.offset(), "a table record is skipped: {why}");
                    continue;
                }
            };
            let (key, value) = change;
            // In place: a table the installed snapshot shares is copied once, at its first
            // change after the install.
            let mut table = into.remove(name).unwrap_or_else(|| {
                Arc::new(RefTable::new(if cfg.value.is_none() { TableKind::List } else { TableKind::Map }))
            });
            let t = Arc::make_mut(&mut table);
            match &value {
                Some(v) => {
                    let _ = t.insert(key.clone(), v.clone());
                }
                None => {
                    t.remove(&key);
                }
            }
            into.set(name.clone(), table);
            self.changed
                .entry(name.clone())
                .or_default()
                .insert(key_text(&key), (context::to_json(&key), value.as_ref().map(context::to_json)));
        }
        Ok(n)
    }

    /// The records of the current version whole (an instance's first, or after a rewind).
    fn whole(&mut self, fresh: bool) -> Vec<Record> {
        if fresh {
            self.n += 1;
            self.current_id = format!("{}:{}", self.incarnation, self.n);
        }
        let tables: BTreeMap<String, TableChange> = self
            .current
            .names()
            .filter_map(|n| self.current.get(n).map(|t| (n.to_owned(), TableChange::whole(t))))
            .collect();
        version_records(&self.current_id, None, &tables, ENTRIES_PER_RECORD)
    }
}

impl Worker {
    /// Between transactions, installs what the table topics brought since the last install:
    /// into every partition, recorded in a transaction that opens for it (the next records
    /// read go in it too).
    pub(super) fn follow_tables(&mut self) -> Result<()> {
        let Some(t) = self.tables.as_mut() else { return Ok(()) };
        let mut pending = std::mem::take(&mut t.pending);
        let polled = t.poll(&mut pending, Duration::ZERO);
        t.pending = pending;
        polled?;
        // Records read in the open transaction were read with the tables before: it ends first.
        // (A staged one is closed: what it read, it read with them too.)
        if t.changed.is_empty() || self.in_txn {
            return Ok(());
        }
        if self.parts.is_empty() {
            // Nothing reads them: the next assignment records the version whole.
            t.n += 1;
            t.current_id = format!("{}:{}", t.incarnation, t.n);
            t.current = t.pending.clone();
            t.changed.clear();
            t.first_recorded = false;
            return Ok(());
        }
        let base = t.current_id.clone();
        t.n += 1;
        t.current_id = format!("{}:{}", t.incarnation, t.n);
        t.current = t.pending.clone();
        let changes: BTreeMap<String, TableChange> = std::mem::take(&mut t.changed)
            .into_iter()
            .map(|(name, entries)| {
                let mut c = TableChange::default();
                for (_, (k, v)) in entries {
                    match v {
                        Some(v) => c.put.push((k, v)),
                        None => c.remove.push(k),
                    }
                }
                (name, c)
            })
            .collect();
        let records = version_records(&t.current_id, Some(&base), &changes, ENTRIES_PER_RECORD);
        let (data, id) = (t.current.clone(), t.current_id.clone());
        let entries: usize = changes.values().map(|c| c.put.len() + c.remove.len()).sum();
        tracing::info!(version = %id, entries, "reference tables changed: installed between transactions");
        self.begin();
        for r in &records {
            self.record_context(r);
        }
        self.use_tables(&data, &id, None);
        Ok(())
    }

    /// Installs the current tables into the partitions `only` (all when `None`) and records
    /// from where they read them: after an assignment (and the instance's first version with
    /// the first one), or after a rewind (`whole`: the version again, whole, as a new one: the
    /// records of the aborted transaction are gone).
    pub(super) fn tables_after(&mut self, only: Option<&[(String, i32)]>, whole: bool) {
        let Some(t) = self.tables.as_mut() else { return };
        let mut records = Vec::new();
        if whole || !t.first_recorded {
            records = t.whole(whole);
            t.first_recorded = true;
        }
        let (data, id) = (t.current.clone(), t.current_id.clone());
        self.begin();
        for r in &records {
            self.record_context(r);
        }
        self.use_tables(&data, &id, if whole { None } else { only });
    }

    fn use_tables(&mut self, data: &RefData, id: &str, only: Option<&[(String, i32)]>) {
        let mut at = Vec::new();
        for (topic, m) in &mut self.parts {
            for (p, part) in m.iter_mut() {
                if only.is_some_and(|l| !l.iter().any(|(t, q)| t == topic && q == p)) {
                    continue;
                }
                part.set_reference(data);
                at.push((topic.clone(), *p, part.next_offset));
            }
        }
        if !at.is_empty() {
            self.record_context(&Record::Use { id: id.to_owned(), at });
        }
    }
}

/// The tables of `cfg`, read (`None`: no table configured).
pub(super) fn start(cfg: &Config, config_path: &std::path::Path) -> Result<Option<Tables>> {
    if cfg.tables.is_empty() {
        return Ok(None);
    }
    if let Some((name, _)) = cfg.tables.iter().find(|(_, t)| t.file.is_none() && t.topic.is_none()) {
        return Err(Error::usage(format!(
            "tables.{name}: give its contents' `file` or `topic` (a table the service cannot fill would be empty)"
        )));
    }
    Tables::start(cfg, config_path).map(Some).map_err(|e: Error| e.context("reference tables"))
}
