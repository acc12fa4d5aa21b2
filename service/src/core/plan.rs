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
pub const REASONS: &[&str] =
    &["no-value", "not-avro", "unknown-schema", "wrong-schema", "missing-field", "undecodable", "bad-timestamp"];

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
    Ok(())
}

/// One stream as the service runs it: its schema, watermark rule and patterns.
#[derive(Debug)]
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
}

impl StreamPlan {
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

/// The plan of every configured stream some pattern of `nfas` reads, by topic; warns about
/// patterns keyed by another field than their topic's partitioning key. `path`: the config file
/// (for messages).
pub fn build_plans(
    streams: &BTreeMap<String, StreamConfig>,
    path: &Path,
    catalog: &dsl::Catalog,
    nfas: &[Arc<Nfa>],
) -> Result<BTreeMap<String, Arc<StreamPlan>>, Error> {
    let mut plans = BTreeMap::new();
    for (name, s) in streams {
        let patterns: Vec<_> = nfas.iter().filter(|n| &n.meta.stream == name).cloned().collect();
        if patterns.is_empty() {
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
        if let Some(k) = &s.key {
            for n in &patterns {
                let field = &schema.fields[n.meta.key.index()].path;
                if field != k {
                    tracing::warn!(
                        pattern = %n.meta.name, stream = %name,
                        "the pattern is keyed by `{field}` but the topic is partitioned by `{k}`: it sees \
                         each key's events per partition only"
                    );
                }
            }
        }
        if plans.values().any(|p: &Arc<StreamPlan>| p.topic == s.topic) {
            return Err(Error::usage(format!("{}: two streams read topic `{}`", path.display(), s.topic)));
        }
        plans.insert(s.topic.clone(), StreamPlan::new(name, s, schema, &patterns));
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
