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
    /// The patterns reading this stream, sorted by name.
    pub patterns: Vec<Arc<Nfa>>,
}

impl StreamPlan {
    /// The plan of stream `name` (its config validated): the patterns of `nfas` that read it.
    pub fn new(name: &str, config: &StreamConfig, schema: Arc<StreamSchema>, nfas: &[Arc<Nfa>]) -> Arc<StreamPlan> {
        Arc::new(StreamPlan {
            name: name.to_owned(),
            topic: config.topic.clone(),
            schema,
            out_of_orderness: config.max_out_of_orderness.map_or(0, |d| d.0),
            patterns: nfas.iter().filter(|n| n.meta.stream == name).cloned().collect(),
        })
    }
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
