//! Following the pattern sets topic, the fleet's source of truth: at start an instance reads
//! it to its end (every recorded set goes into its [`Library`], and the latest deployment for
//! its consumer group is the set it starts with); then it polls it in its loop, switches to
//! each new deployment of its group at the next transaction boundary ([`Worker::follow`]) and
//! learns the sets other instances activate.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::rebalance::GroupContext;
use super::Worker;
use crate::core::config::Config;
use crate::core::pattern_sets::{self, latest_deployment, Activation, Deployment, Library, PatternSet};
use crate::core::range::PartRange;
use crate::error::{Error, Kind, Result, ResultExt};
use crate::io::reader::{self, PartReader, Read, Reader};

/// The pattern sets topic, read from where the start-up read ended.
pub(super) struct Follower {
    consumer: Reader,
    topic: String,
    group: String,
    catalog: dsl::Catalog,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("topic", &self.topic).field("group", &self.group).finish_non_exhaustive()
    }
}

/// What the start-up read of the pattern sets topic found.
pub(super) struct Found {
    pub follower: Follower,
    /// Every recorded set that still compiles here, and the given one.
    pub library: Library,
    /// The latest deployment for the group, compiled: the set to start with.
    pub deployed: Option<(PatternSet, Deployment)>,
}

/// Reads the pattern sets topic (committed records, every partition) to its end; `set` is the
/// instance's own set (from its pattern files).
pub(super) fn start(cfg: &Config, catalog: &dsl::Catalog, set: &PatternSet) -> Result<Found> {
    let topic = cfg.outputs.pattern_sets_topic.clone();
    let consumer = reader::reader(cfg)?;
    let n = reader::partitions(&consumer, cfg, &[&topic])?[0];
    let mut records = Vec::new();
    let mut ends = TopicPartitionList::new();
    for p in 0..n {
        let (lo, hi) = consumer
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .or_fail_with(Kind::Failed, || format!("cannot read the ends of {topic}/{p}"))?;
        let mut next = lo;
        if hi > lo {
            let mut r =
                PartReader::new(&consumer, &PartRange { topic: topic.clone(), partition: p, start: lo, end: hi })?;
            loop {
                match r.next()? {
                    Read::Record(m) => {
                        next = m.offset() + 1;
                        match serde_json::from_slice::<Activation>(m.payload().unwrap_or_default()) {
                            Ok(a) => records.push(a),
                            Err(e) => tracing::warn!("{topic}/{p}@{} is not a pattern set record: {e}", m.offset()),
                        }
                    }
                    Read::Done { next: at } => {
                        next = next.max(at);
                        break;
                    }
                }
            }
        }
        ends.add_partition_offset(&topic, p, Offset::Offset(next)).or_fail(Kind::Failed, "follower assignment")?;
    }
    consumer.assign(&ends).or_fail_with(Kind::Failed, || format!("cannot follow topic `{topic}`"))?;
    let mut library = Library::default();
    library.add(set);
    for (hash, e) in library.add_recorded(&records, &topic, catalog) {
        tracing::warn!(
            "recorded pattern set {hash} does not compile here; the state of its versions is not restored: {e}"
        );
    }
    let group = cfg.kafka.group_id.clone();
    let deployed = match latest_deployment(&records, &group) {
        Some(a) => {
            let d = a.deployment.clone().ok_or_else(|| Error::failed("a deployment without its deployment"))?;
            let found = pattern_sets::recorded(std::slice::from_ref(a), &a.set, &topic, catalog).map_err(|e| {
                e.context(format!(
                    "the latest deployment ({}) of group `{group}` in `{topic}` cannot run here: fix it with \
                     `tripline deploy` or `tripline rollback`",
                    d.id
                ))
            })?;
            Some((found.set, d))
        }
        None => None,
    };
    let follower = Follower { consumer, topic, group, catalog: catalog.clone() };
    Ok(Found { follower, library, deployed })
}

impl Follower {
    /// The deployments for the group recorded since the last call, compiled (without waiting).
    /// One that does not compile here is logged and skipped. The sets other instances
    /// activated go into `library` (a partition that moves here may hold state of them).
    fn poll(&self, library: &mut Library) -> Vec<(PatternSet, Deployment)> {
        let mut out = Vec::new();
        loop {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, "following the pattern sets: {e}");
                    break;
                }
                Some(Ok(m)) => {
                    let Ok(a) = serde_json::from_slice::<Activation>(m.payload().unwrap_or_default()) else {
                        tracing::warn!("{}/{}@{} is not a pattern set record", self.topic, m.partition(), m.offset());
                        continue;
                    };
                    let Some(d) = a.deployment_for(&self.group).cloned() else {
                        if a.patterns.iter().any(|p| library.get(&p.hash).is_none()) {
                            let one = std::slice::from_ref(&a);
                            for (hash, e) in library.add_recorded(one, &self.topic, &self.catalog) {
                                tracing::warn!("recorded pattern set {hash} does not compile here: {e}");
                            }
                        }
                        continue;
                    };
                    match pattern_sets::recorded(std::slice::from_ref(&a), &a.set, &self.topic, &self.catalog) {
                        Ok(found) => out.push((found.set, d)),
                        Err(e) => tracing::error!(
                            deployment = %d.id, set = %a.set,
                            "deployment refused, the running patterns stay: it cannot run here: {e}"
                        ),
                    }
                }
            }
        }
        out
    }
}

impl Worker {
    /// Switches to the deployments of the group recorded since the last call (the last of
    /// them: each is a whole set), unless it runs it already.
    pub(super) fn follow(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<()> {
        let Some(follower) = &self.follower else { return Ok(()) };
        let Some((set, deployment)) = follower.poll(&mut self.library).pop() else { return Ok(()) };
        if self.deployment.as_ref().is_some_and(|d| d.id == deployment.id) {
            return Ok(());
        }
        tracing::info!(deployment = %deployment.id, set = %set.hash(), "deployment read: switching");
        self.activate(consumer, set, "switch", Some(deployment))
    }
}
