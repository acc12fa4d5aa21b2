//! What the service's results depend on besides the records, recorded for replay in the context
//! topic (`outputs.context_topic`, default `<group_id>.context`, one partition, written in the
//! transactions that apply it):
//!
//! - **Wall-clock advances** of idle partitions (streams with `advance_when_idle`): a partition
//!   that had no record for its stream's `idle_timeout` and has nothing left to read moves its
//!   watermark as if an event stamped with the wall clock had arrived ([`Record::Advance`]).
//! - **Reference table versions** ([`Record::Tables`]): the contents of the reference tables an
//!   instance installed, as changes to the version before (its first one holds every table
//!   whole), and which partitions use a version from which offset on ([`Record::Use`]). Tables
//!   change only at transaction boundaries, so every record of a partition before `before` was
//!   read with the tables before, every one from `before` on with the new ones.
//!
//! A replay reads the topic in order and applies each step to its partition before the record at
//! `before` (or after the last record read), in the order the service applied them: it gives
//! the service's bytes. The topic keeps what a compacted table topic forgets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use engine::{RefData, RefTable, TableKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// One record of the context topic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    /// An idle partition's watermark advanced by the wall clock.
    Advance {
        /// The stream's topic and partition.
        topic: String,
        partition: i32,
        /// The partition's next offset when it advanced: the advance comes before that record.
        before: i64,
        /// The wall clock read (ms since the epoch): the partition's newest event time from then.
        clock: i64,
        /// The watermark it gave (for readers; a replay recomputes it from `clock`).
        watermark: i64,
    },
    /// A version of an instance's reference tables: `base` (none: every table is here whole)
    /// with `tables` changed. A big version is written in `parts` records of the same `id`.
    Tables { id: String, base: Option<String>, part: u32, parts: u32, tables: BTreeMap<String, TableChange> },
    /// The partitions `at` (topic, partition, before) read with version `id` from the record at
    /// `before` on.
    Use { id: String, at: Vec<(String, i32, i64)> },
}

impl Record {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The record's key: the partition of an advance, the version of the others.
    pub fn key(&self) -> String {
        match self {
            Record::Advance { topic, partition, .. } => format!("{topic}/{partition}"),
            Record::Tables { id, .. } | Record::Use { id, .. } => id.clone(),
        }
    }
}

/// How one table changed: emptied first (`clear`, with its kind), then `put` entries set and
/// `remove` keys removed. Keys and values are JSON: a whole number, a text, a number, a boolean
/// or null, as the table holds them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TableChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub put: Vec<(Json, Json)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<Json>,
}

fn kind_name(k: TableKind) -> &'static str {
    match k {
        TableKind::List => "list",
        _ => "map",
    }
}

pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.to_string()),
    }
}

pub fn from_json(j: &Json) -> Value {
    match j {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) if n.is_i64() => Value::Int(n.as_i64().unwrap_or_default()),
        Json::Number(n) => Value::Float(n.as_f64().unwrap_or_default()),
        Json::String(s) => Value::str(s),
        _ => Value::Null,
    }
}

impl TableChange {
    /// The whole of `table`.
    pub fn whole(table: &RefTable) -> TableChange {
        TableChange {
            clear: Some(kind_name(table.kind()).to_owned()),
            put: table.iter().map(|(k, v)| (to_json(&k), to_json(v))).collect(),
            remove: Vec::new(),
        }
    }

    /// Applies the change to table `name` of `data`.
    pub fn apply(&self, name: &str, data: &mut RefData) {
        let mut table = match (&self.clear, data.get(name)) {
            (Some(kind), _) => RefTable::new(if kind == "list" { TableKind::List } else { TableKind::Map }),
            (None, Some(t)) => RefTable::clone(t),
            (None, None) => RefTable::new(TableKind::Map),
        };
        for (k, v) in &self.put {
            // Keys come from a table, so they are whole numbers or texts.
            let _ = table.insert(from_json(k), from_json(v));
        }
        for k in &self.remove {
            table.remove(&from_json(k));
        }
        data.set(name.to_owned(), Arc::new(table));
    }

    fn entries(&self) -> usize {
        self.put.len() + self.remove.len()
    }
}

/// The records of version `id` (after `base`) with `tables` changed, each holding about
/// `per_record` entries at most (one table's change may be split over several records).
pub fn version_records(
    id: &str,
    base: Option<&str>,
    tables: &BTreeMap<String, TableChange>,
    per_record: usize,
) -> Vec<Record> {
    let mut chunks: Vec<BTreeMap<String, TableChange>> = vec![BTreeMap::new()];
    let mut size = 0;
    for (name, change) in tables {
        let mut rest = change.clone();
        loop {
            let room = per_record.saturating_sub(size).max(1);
            let mut head = TableChange { clear: rest.clear.take(), ..TableChange::default() };
            let n = rest.put.len().min(room);
            head.put = rest.put.drain(..n).collect();
            let m = rest.remove.len().min(room - n.min(room));
            head.remove = rest.remove.drain(..m).collect();
            size += head.entries();
            let last = chunks.last_mut().expect("one chunk at least");
            // A table's later parts merge into the same chunk's entry only when empty so far.
            match last.get_mut(name) {
                Some(existing) => {
                    existing.put.extend(head.put);
                    existing.remove.extend(head.remove);
                }
                None => {
                    last.insert(name.clone(), head);
                }
            }
            if rest.put.is_empty() && rest.remove.is_empty() {
                break;
            }
            chunks.push(BTreeMap::new());
            size = 0;
        }
    }
    let parts = chunks.len() as u32;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, tables)| Record::Tables {
            id: id.to_owned(),
            base: base.map(str::to_owned),
            part: i as u32,
            parts,
            tables,
        })
        .collect()
}

/// A step a replay applies to a partition before its record at some offset.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Advance the watermark by the wall clock read (see [`Record::Advance`]).
    Advance(i64),
    /// Install the reference tables of this version.
    Tables(RefData),
}

/// The context a replay applies as it reads the records: per partition, its steps in the order
/// the service applied them.
#[derive(Clone, Debug, Default)]
pub struct Context {
    steps: BTreeMap<(String, i32), VecDeque<(i64, StepRef)>>,
    versions: HashMap<String, Version>,
    /// Versions made (cache).
    made: HashMap<String, RefData>,
}

#[derive(Clone, Debug)]
enum StepRef {
    Advance(i64),
    Version(String),
}

#[derive(Clone, Debug, Default)]
struct Version {
    base: Option<String>,
    /// Its records' changes, by part.
    parts: BTreeMap<u32, BTreeMap<String, TableChange>>,
}

impl Context {
    /// Takes the records of the context topic, in its order.
    pub fn push(&mut self, r: Record) {
        match r {
            Record::Advance { topic, partition, before, clock, .. } => {
                self.steps.entry((topic, partition)).or_default().push_back((before, StepRef::Advance(clock)));
            }
            Record::Tables { id, base, part, tables, .. } => {
                let v = self.versions.entry(id).or_default();
                v.base = base;
                v.parts.insert(part, tables);
            }
            Record::Use { id, at } => {
                for (topic, partition, before) in at {
                    self.steps.entry((topic, partition)).or_default().push_back((before, StepRef::Version(id.clone())));
                }
            }
        }
    }

    /// The reference tables of version `id` (`None`: not in the topic, or a version it is
    /// based on is not).
    fn version(&mut self, id: &str) -> Option<RefData> {
        if let Some(d) = self.made.get(id) {
            return Some(d.clone());
        }
        // The chain back to a version made or whole.
        let mut chain = vec![id.to_owned()];
        let mut data = loop {
            let last = chain.last()?;
            let v = self.versions.get(last)?;
            match &v.base {
                None => break RefData::default(),
                Some(b) => match self.made.get(b) {
                    Some(d) => break d.clone(),
                    None => chain.push(b.clone()),
                },
            }
        };
        for id in chain.iter().rev() {
            let v = self.versions.get(id)?;
            for tables in v.parts.values() {
                for (name, change) in tables {
                    change.apply(name, &mut data);
                }
            }
            self.made.insert(id.clone(), data.clone());
        }
        Some(data)
    }

    /// Takes the steps of `topic`/`partition` applied before its record at `offset` (at or
    /// before it), in order. A version the topic does not hold is skipped with a warning.
    pub fn due(&mut self, topic: &str, partition: i32, offset: i64) -> Vec<Step> {
        let Some(q) = self.steps.get_mut(&(topic.to_owned(), partition)) else { return Vec::new() };
        let mut due = Vec::new();
        while q.front().is_some_and(|(before, _)| *before <= offset) {
            due.extend(q.pop_front().map(|(_, s)| s));
        }
        let mut out = Vec::with_capacity(due.len());
        for s in due {
            match s {
                StepRef::Advance(clock) => out.push(Step::Advance(clock)),
                StepRef::Version(id) => match self.version(&id) {
                    Some(d) => out.push(Step::Tables(d)),
                    None => tracing::warn!(version = %id, "reference tables the context topic does not hold (whole)"),
                },
            }
        }
        out
    }

    /// A replay that starts `topic`/`partition` at `start`: the advances before it are in the
    /// state it starts from and are dropped; the last table version used before it applies from
    /// `start` on.
    pub fn start_at(&mut self, topic: &str, partition: i32, start: i64) {
        let Some(q) = self.steps.get_mut(&(topic.to_owned(), partition)) else { return };
        let mut last_version = None;
        while q.front().is_some_and(|(before, _)| *before < start) {
            if let Some((_, StepRef::Version(id))) = q.pop_front() {
                last_version = Some(id);
            }
        }
        if let Some(id) = last_version {
            q.push_front((start, StepRef::Version(id)));
        }
    }

    /// Steps still to apply, over all partitions.
    pub fn len(&self) -> usize {
        self.steps.values().map(VecDeque::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adv(p: i32, before: i64, clock: i64) -> Record {
        Record::Advance { topic: "t".into(), partition: p, before, clock, watermark: clock - 1 }
    }

    fn list(keys: &[&str]) -> RefTable {
        let mut t = RefTable::new(TableKind::List);
        for k in keys {
            t.insert(Value::str(k), Value::Bool(true)).expect("a key");
        }
        t
    }

    #[test]
    fn advances_come_out_in_order_before_their_record() {
        let mut c = Context::default();
        for x in [adv(0, 5, 100), adv(0, 5, 200), adv(1, 3, 50), adv(0, 9, 300)] {
            c.push(x);
        }
        c.start_at("t", 1, 3);
        assert_eq!(c.len(), 4);
        assert!(c.due("t", 0, 4).is_empty());
        assert_eq!(c.due("t", 0, 5), vec![Step::Advance(100), Step::Advance(200)]);
        assert!(c.due("t", 0, 8).is_empty());
        assert_eq!(c.due("t", 0, 20), vec![Step::Advance(300)]);
        assert_eq!(c.due("t", 1, 3), vec![Step::Advance(50)]);
        assert!(c.is_empty());
        assert!(c.due("u", 0, 100).is_empty());
    }

    #[test]
    fn versions_are_built_from_their_changes_split_over_records() {
        let mut v1 = RefData::default();
        v1.set("l", Arc::new(list(&["a", "b", "c", "d", "e"])));
        let whole: BTreeMap<String, TableChange> =
            [("l".to_owned(), TableChange::whole(v1.get("l").expect("l")))].into_iter().collect();
        let records = version_records("i/1", None, &whole, 2);
        assert_eq!(records.len(), 3, "{records:?}");
        let change = TableChange {
            put: vec![(Json::from("z"), Json::Bool(true))],
            remove: vec![Json::from("a")],
            ..TableChange::default()
        };
        let delta: BTreeMap<String, TableChange> = [("l".to_owned(), change)].into_iter().collect();
        let mut c = Context::default();
        for r in records.into_iter().chain(version_records("i/2", Some("i/1"), &delta, 100)) {
            // Through JSON, as the topic holds them.
            c.push(Record::from_json(r.to_json().as_bytes()).expect("reads back"));
        }
        c.push(Record::Use { id: "i/1".into(), at: vec![("t".into(), 0, 0)] });
        c.push(adv(0, 4, 10));
        c.push(Record::Use { id: "i/2".into(), at: vec![("t".into(), 0, 4)] });
        let first = c.due("t", 0, 0);
        assert_eq!(first, vec![Step::Tables(v1.clone())]);
        let mut v2 = v1.clone();
        v2.set("l", Arc::new(list(&["b", "c", "d", "e", "z"])));
        assert_eq!(c.due("t", 0, 7), vec![Step::Advance(10), Step::Tables(v2)]);
    }

    #[test]
    fn a_replay_that_starts_later_starts_with_the_version_in_use_then() {
        let mut c = Context::default();
        let mut v = RefData::default();
        v.set("l", Arc::new(list(&["a"])));
        let whole: BTreeMap<String, TableChange> =
            [("l".to_owned(), TableChange::whole(v.get("l").expect("l")))].into_iter().collect();
        for r in version_records("i/1", None, &whole, 100) {
            c.push(r);
        }
        c.push(Record::Use { id: "i/1".into(), at: vec![("t".into(), 0, 0)] });
        c.push(adv(0, 3, 10));
        c.start_at("t", 0, 5);
        assert_eq!(c.due("t", 0, 5), vec![Step::Tables(v)]);
    }
}
