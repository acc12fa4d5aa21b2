//! One stream as the service runs it ([`StreamPlan`]: topic, schema, watermark rule, patterns)
//! and the checks every decoded event passes before the patterns see it ([`admit`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use dsl::StreamSchema;
use engine::{Event, Nfa};

use super::config::StreamConfig;
use crate::error::Error;

/// Every dead-letter reason code (the `tripline.reason` header and the metrics' `reason` label).
pub const REASONS: &[&str] = &[
    "no-value",
    "not-avro",
    "unknown-schema",
    "wrong-schema",
    "missing-field",
    "undecodable",
    "bad-timestamp",
    "not-repartitioned",
];

/// Why a record is not processed (it goes to the dead-letter topic): a stable code and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub code: &'static str,
    pub message: String,
}

impl Reject {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Reject { code, message: message.into() }
    }
}

/// The checks every decoded event passes before the patterns see it, in the service and in a
/// replay alike: the event time within `[min_ts, max_ts]` (one absurd timestamp would make the
/// partition's later events late) and a key for every pattern.
pub fn admit(plan: &StreamPlan, event: &Event, min_ts: i64, max_ts: i64) -> Result<(), Reject> {
    if event.ts < min_ts || event.ts > max_ts {
        return Err(Reject::new(
            "bad-timestamp",
            format!(
                "event time {} is outside the accepted range [{min_ts}, {max_ts}] (service.min_event_time/max_event_time)",
                event.ts
            ),
        ));
    }
    for nfa in &plan.patterns {
        if event.field(nfa.meta.key).is_null() {
            let field = &plan.schema.fields[nfa.meta.key.index()].path;
            return Err(Reject::new(
                "missing-field",
                format!("the key field `{field}` of pattern `{}` is null", nfa.meta.name),
            ));
        }
    }
    for f in plan.forwards() {
        if event.field(f.field).is_null() {
            return Err(Reject::new(
                "missing-field",
                format!("the key field `{}` of pattern(s) {} is null", f.name, f.patterns.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Where a plan's records come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The stream's topic. Its records are also forwarded to the repartition topics of the
    /// stream's patterns keyed by another field than the topic's partitioning key (see
    /// [`super::repartition`]).
    Source { forwards: Vec<Forward> },
    /// A repartition topic of the stream, written by the source stage: its partition's
    /// watermark comes from the source partitions' markers.
    Repartitioned {
        /// The stream's topic.
        source_topic: String,
        /// The key field.
        field: String,
    },
}

/// A repartition topic the source stage writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub topic: String,
    /// The key field (a record's partition there is its value's).
    pub field: engine::FieldId,
    /// Its path, for messages.
    pub name: String,
    /// The patterns that read it, for messages.
    pub patterns: Vec<String>,
}

/// One stream as the service runs it: its schema, watermark rule and patterns.
#[derive(Clone, Debug)]
pub struct StreamPlan {
    pub name: String,
    pub topic: String,
    pub schema: Arc<StreamSchema>,
    /// Bounded out-of-orderness in ms.
    pub out_of_orderness: i64,
    /// The patterns reading this stream, sorted by name (a canary deployment runs two versions
    /// of a pattern).
    pub patterns: Vec<Arc<Nfa>>,
    /// Per pattern (parallel to `patterns`), the keys on which its alerts are live.
    pub live_keys: Vec<LiveKeys>,
    pub stage: Stage,
}

impl StreamPlan {
    /// The repartition topics its records are forwarded to (none but for a source stage).
    pub fn forwards(&self) -> &[Forward] {
        match &self.stage {
            Stage::Source { forwards } => forwards,
            Stage::Repartitioned { .. } => &[],
        }
    }

    /// The same patterns reading the stream's events directly, in one partition per input
    /// partition, with no repartition topic (tests, and replays of a file).
    pub fn direct(&self) -> Arc<StreamPlan> {
        let topic = match &self.stage {
            Stage::Repartitioned { source_topic, .. } => source_topic.clone(),
            Stage::Source { .. } => self.topic.clone(),
        };
        Arc::new(StreamPlan { topic, stage: Stage::Source { forwards: Vec::new() }, ..self.clone() })
    }

    /// Its `stream` label in the metrics: the stream's name, `<stream>.by-<field>` for a
    /// repartition topic (whose partitions are not the stream topic's).
    pub fn metric_label(&self) -> std::borrow::Cow<'_, str> {
        match &self.stage {
            Stage::Source { .. } => std::borrow::Cow::Borrowed(&self.name),
            Stage::Repartitioned { field, .. } => std::borrow::Cow::Owned(format!("{}.by-{field}", self.name)),
        }
    }

    /// Whether it reads a repartition topic.
    pub fn is_repartitioned(&self) -> bool {
        matches!(self.stage, Stage::Repartitioned { .. })
    }

    /// The plans that run stream `name` for consumer group `group`: the stream's topic with the
    /// patterns keyed by its partitioning key (`key`), and one repartition topic per other key
    /// field with the patterns keyed by it (see [`super::repartition`]). Without a partitioning
    /// key configured, every pattern reads the topic. The source plan is first (it may have no
    /// pattern of its own: it forwards); empty when no pattern of `nfas` reads the stream.
    pub fn layout(
        name: &str,
        config: &StreamConfig,
        schema: Arc<StreamSchema>,
        nfas: &[Arc<Nfa>],
        group: &str,
    ) -> Vec<Arc<StreamPlan>> {
        let mine: Vec<Arc<Nfa>> = nfas.iter().filter(|n| n.meta.stream == name).cloned().collect();
        if mine.is_empty() {
            return Vec::new();
        }
        let field_of = |n: &Nfa| schema.fields[n.meta.key.index()].path.clone();
        let (direct, rekeyed): (Vec<_>, Vec<_>) =
            mine.into_iter().partition(|n| config.key.as_ref().is_none_or(|k| *k == field_of(n)));
        let mut by_field: BTreeMap<String, Vec<Arc<Nfa>>> = BTreeMap::new();
        for n in rekeyed {
            by_field.entry(field_of(&n)).or_default().push(n);
        }
        let forwards = by_field
            .iter()
            .map(|(f, ns)| Forward {
                topic: super::repartition::topic_name(group, name, f),
                field: ns[0].meta.key,
                name: f.clone(),
                patterns: ns.iter().map(|n| format!("`{}`", n.meta.name)).collect(),
            })
            .collect::<Vec<_>>();
        let plan = |topic: String, patterns: Vec<Arc<Nfa>>, stage: Stage| {
            Arc::new(StreamPlan {
                name: name.to_owned(),
                topic,
                schema: schema.clone(),
                out_of_orderness: config.max_out_of_orderness.map_or(0, |d| d.0),
                live_keys: vec![LiveKeys::ALL; patterns.len()],
                patterns,
                stage,
            })
        };
        let mut plans = vec![plan(config.topic.clone(), direct, Stage::Source { forwards: forwards.clone() })];
        for (f, (field, patterns)) in forwards.into_iter().zip(by_field) {
            let stage = Stage::Repartitioned { source_topic: config.topic.clone(), field };
            plans.push(plan(f.topic, patterns, stage));
        }
        plans
    }

    /// The plan of stream `name` (its config validated): the patterns of `nfas` that read it,
    /// live on every key.
    pub fn new(name: &str, config: &StreamConfig, schema: Arc<StreamSchema>, nfas: &[Arc<Nfa>]) -> Arc<StreamPlan> {
        let patterns: Vec<Arc<Nfa>> = nfas.iter().filter(|n| n.meta.stream == name).cloned().collect();
        Arc::new(StreamPlan {
            name: name.to_owned(),
            topic: config.topic.clone(),
            schema,
            out_of_orderness: config.max_out_of_orderness.map_or(0, |d| d.0),
            live_keys: vec![LiveKeys::ALL; patterns.len()],
            patterns,
            stage: Stage::Source { forwards: Vec::new() },
        })
    }

    /// The plan with the live keys of the patterns named (by content hash) in `live`; the
    /// others are live on every key.
    pub fn exposed(self: Arc<Self>, live: &BTreeMap<String, LiveKeys>) -> Arc<StreamPlan> {
        if live.is_empty() {
            return self;
        }
        let live_keys =
            self.patterns.iter().map(|n| live.get(&n.meta.hash).copied().unwrap_or(LiveKeys::ALL)).collect();
        Arc::new(StreamPlan {
            name: self.name.clone(),
            topic: self.topic.clone(),
            schema: self.schema.clone(),
            out_of_orderness: self.out_of_orderness,
            patterns: self.patterns.clone(),
            live_keys,
            stage: self.stage.clone(),
        })
    }
}

/// Every plan of `plans` with the live keys of `live` (see [`StreamPlan::exposed`]).
pub fn expose(
    plans: BTreeMap<String, Arc<StreamPlan>>,
    live: &BTreeMap<String, LiveKeys>,
) -> BTreeMap<String, Arc<StreamPlan>> {
    plans.into_iter().map(|(t, p)| (t, p.exposed(live))).collect()
}

/// Key buckets: a key's bucket is in `0..BUCKETS` ([`key_bucket`]), so a share of keys is
/// given in basis points.
pub const BUCKETS: u16 = 10_000;

/// The keys on which a pattern version's alerts are live (elsewhere they go to the shadow
/// alerts topic): the keys whose bucket ([`key_bucket`]) is in `from..to`. A canary deployment
/// splits the buckets between the new and the old version of a pattern; a shadow deployment
/// gives the new version none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct LiveKeys {
    pub from: u16,
    pub to: u16,
}

impl LiveKeys {
    pub const ALL: LiveKeys = LiveKeys { from: 0, to: BUCKETS };
    pub const NONE: LiveKeys = LiveKeys { from: 0, to: 0 };

    pub fn is_all(self) -> bool {
        self.from == 0 && self.to >= BUCKETS
    }

    /// Whether alerts of `key` (its text) are live.
    pub fn live_for(self, key: &str) -> bool {
        if self.is_all() {
            return true;
        }
        let b = key_bucket(key);
        self.from <= b && b < self.to
    }
}

impl std::fmt::Display for LiveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |bp: u16| f64::from(bp) / 100.0;
        write!(f, "live on key buckets {}%..{}%", pct(self.from), pct(self.to))
    }
}

/// A key's bucket: the first 8 bytes of the SHA-256 of its text, as a big-endian number, modulo
/// [`BUCKETS`]. The same on every instance, in replays and across versions.
pub fn key_bucket(key: &str) -> u16 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) % u64::from(BUCKETS)) as u16
}

/// The plans of every configured stream some pattern of `nfas` reads, by topic (see
/// [`StreamPlan::layout`]: a stream's patterns keyed by another field than its partitioning
/// key read a repartition topic of consumer group `group`). `path`: the config file (for
/// messages).
pub fn build_plans(
    streams: &BTreeMap<String, StreamConfig>,
    path: &Path,
    catalog: &dsl::Catalog,
    nfas: &[Arc<Nfa>],
    group: &str,
) -> Result<BTreeMap<String, Arc<StreamPlan>>, Error> {
    let mut plans = BTreeMap::new();
    for (name, s) in streams {
        if !nfas.iter().any(|n| &n.meta.stream == name) {
            continue;
        }
        if s.timestamp_field.is_none() {
            return Err(Error::usage(format!(
                "{}: stream `{name}` has no timestamp_field: the service needs each event's event time",
                path.display()
            )));
        }
        let schema = catalog
            .streams
            .get(name)
            .cloned()
            .ok_or_else(|| Error::usage(format!("stream `{name}` is not in the catalog")))?;
        if s.key.is_none() {
            let keys: std::collections::BTreeSet<&str> = nfas
                .iter()
                .filter(|n| &n.meta.stream == name)
                .map(|n| schema.fields[n.meta.key.index()].path.as_str())
                .collect();
            if keys.len() > 1 {
                tracing::warn!(
                    stream = %name,
                    "the patterns are keyed by {keys:?} but streams.{name}.key (the field the topic is partitioned by) \
                     is not set: each pattern sees each key's events per partition only"
                );
            }
        }
        for plan in StreamPlan::layout(name, s, schema, nfas, group) {
            if let Some(other) = plans.values().find(|p: &&Arc<StreamPlan>| p.topic == plan.topic) {
                return Err(Error::usage(format!(
                    "{}: streams `{}` and `{name}` both read topic `{}`",
                    path.display(),
                    other.name,
                    plan.topic
                )));
            }
            if let Stage::Repartitioned { field, .. } = &plan.stage {
                tracing::info!(
                    stream = %name, field = %field, topic = %plan.topic,
                    patterns = ?plan.patterns.iter().map(|n| n.meta.name.as_str()).collect::<Vec<_>>(),
                    "keyed by another field than the topic's partitioning key: read through a repartition topic"
                );
            }
            plans.insert(plan.topic.clone(), plan);
        }
    }
    if plans.is_empty() {
        return Err(Error::usage("no pattern reads a configured stream: nothing to run"));
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_buckets_split_keys_in_the_shares_asked_for() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("ACC-{i}")).collect();
        for (pct, range) in [(10.0, LiveKeys { from: 0, to: 1_000 }), (50.0, LiveKeys { from: 0, to: 5_000 })] {
            let live = keys.iter().filter(|k| range.live_for(k)).count() as f64 / 100.0;
            assert!((live - pct).abs() <= 2.0, "{live}% of keys for {pct}%");
            let rest = LiveKeys { from: range.to, to: BUCKETS };
            assert!(keys.iter().all(|k| range.live_for(k) != rest.live_for(k)), "each key on exactly one side");
        }
        assert!(keys.iter().all(|k| LiveKeys::ALL.live_for(k) && !LiveKeys::NONE.live_for(k)));
        assert_eq!(key_bucket("ACC-1"), key_bucket("ACC-1"));
    }
}
