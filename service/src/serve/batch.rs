//! The metrics of the service, per batch: what a transaction did is counted in plain integers
//! ([`Batch`]) and folded into the Prometheus metrics when it commits; gauges are set from the
//! state after each commit (and once a second when idle). Label sets known up front start at 0.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::rebalance::GroupContext;
use super::Output;
use super::Worker;
use crate::core::partition::{PatternCounts, Reads};
use crate::core::pattern_sets::set_hash_with;
use crate::core::plan::{LiveKeys, StreamPlan, REASONS};
use crate::obs::metrics::{Metrics, GIT_HASH};
use crate::obs::now_ms;

/// What the open transaction did, counted in plain integers and folded into the metrics when
/// it commits (dropped when it aborts: the work is done, and counted, again).
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// Per stream, what was read.
    pub(super) streams: HashMap<String, Reads>,
    /// Dead letters by (stream, reason, whether decoding failed).
    pub(super) rejects: HashMap<(String, &'static str, bool), u64>,
    /// Records and bytes per [`Output`].
    pub(super) produced: [(u64, u64); Output::ALL.len()],
    /// Per alert: its event time and the Kafka timestamp of the record that triggered it.
    pub(super) latencies: Vec<(i64, Option<i64>)>,
    /// Per pattern and partition, what the engine counted.
    pub(super) patterns: Vec<(Arc<engine::Nfa>, PatternCounts)>,
}

impl Batch {
    /// Adds one partition's reads to its stream's (once per partition and commit).
    pub(super) fn add_reads(&mut self, stream: &str, r: Reads) {
        let sum = self.streams.entry(stream.to_owned()).or_default();
        sum.consumed += r.consumed;
        sum.bytes += r.bytes;
        sum.decoded += r.decoded;
        sum.processed += r.processed;
        sum.late += r.late;
    }

    pub(super) fn produced(&mut self, out: Output, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let slot = &mut self.produced[out as usize];
        slot.0 += 1;
        slot.1 += (key.map_or(0, <[u8]>::len) + payload.map_or(0, <[u8]>::len)) as u64;
    }

    /// Adds everything to the metrics; the commit happened now.
    pub(super) fn fold_into(self, m: &Metrics) {
        for (stream, c) in &self.streams {
            let l = [stream.as_str()];
            m.records_consumed.with_label_values(&l).inc_by(c.consumed);
            m.consumed_bytes.with_label_values(&l).inc_by(c.bytes);
            m.events_decoded.with_label_values(&l).inc_by(c.decoded);
            m.events_processed.with_label_values(&l).inc_by(c.processed);
            m.events_late.with_label_values(&l).inc_by(c.late);
        }
        for ((stream, reason, decode), n) in &self.rejects {
            m.dead_lettered.with_label_values(&[stream.as_str(), reason]).inc_by(*n);
            if *decode {
                m.decode_failures.with_label_values(&[stream.as_str(), reason]).inc_by(*n);
            }
        }
        for out in Output::ALL {
            let (n, bytes) = self.produced[out as usize];
            if n > 0 {
                m.records_produced.with_label_values(&[out.label()]).inc_by(n);
                m.produced_bytes.with_label_values(&[out.label()]).inc_by(bytes);
            }
        }
        let now = now_ms();
        let (from_event, from_ingest) =
            (m.alert_latency.with_label_values(&["event_time"]), m.alert_latency.with_label_values(&["ingest"]));
        for (ts, ingest) in &self.latencies {
            from_event.observe(now.saturating_sub(*ts).max(0) as f64 / 1000.0);
            if let Some(i) = ingest {
                from_ingest.observe(now.saturating_sub(*i).max(0) as f64 / 1000.0);
            }
        }
        for (nfa, c) in &self.patterns {
            let name = nfa.meta.name.as_str();
            m.matches.with_label_values(&[name]).inc_by(c.matches);
            m.alerts.with_label_values(&[name, mode_label(nfa), nfa.meta.severity.as_str()]).inc_by(c.matches);
            m.timeouts.with_label_values(&[name]).inc_by(c.timeouts);
            m.partial_matches_dropped.with_label_values(&[name]).inc_by(c.dropped);
            m.state_cache_lookups.with_label_values(&["hit"]).inc_by(c.state_hits);
            m.state_cache_lookups.with_label_values(&["miss"]).inc_by(c.state_misses);
            for (step, position, n) in funnel_steps(nfa).zip(&c.funnel).map(|((v, p), n)| (v, p, *n)) {
                if n > 0 {
                    if let Some((var, pos)) = step.zip(position) {
                        m.funnel_reached.with_label_values(&[name, var, &pos.to_string()]).inc_by(n);
                    }
                }
            }
        }
        m.last_commit.set(now as f64 / 1000.0);
    }
}

fn mode_label(nfa: &engine::Nfa) -> &'static str {
    match nfa.meta.mode {
        engine::Mode::Live => "live",
        engine::Mode::Shadow => "shadow",
    }
}

/// Per variable of the pattern (by `VarId`): its name and position among the steps, or `None`
/// for a negated element (no step of the funnel).
fn funnel_steps(nfa: &engine::Nfa) -> impl Iterator<Item = (Option<&str>, Option<usize>)> + '_ {
    let mut position = 0;
    nfa.vars.iter().map(move |v| {
        if v.negated {
            (None, None)
        } else {
            position += 1;
            (Some(v.name.as_str()), Some(position))
        }
    })
}

/// Sets the information metrics and creates every label set known up front at 0, so that a
/// rate over it is 0 rather than absent before the first event of its kind.
pub(super) fn init_metrics(m: &Metrics, plans: &BTreeMap<String, Arc<StreamPlan>>, timeouts: bool) {
    let nfas: Vec<Arc<engine::Nfa>> = plans.values().flat_map(|p| p.patterns.iter().cloned()).collect();
    // The set's hash as recorded: with the live keys of a canary's versions.
    let live: BTreeMap<String, LiveKeys> = plans
        .values()
        .flat_map(|p| p.patterns.iter().zip(&p.live_keys))
        .filter(|(_, l)| !l.is_all())
        .map(|(n, l)| (n.meta.hash.clone(), *l))
        .collect();
    m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), GIT_HASH, &set_hash_with(&nfas, &live)]).set(1);
    for plan in plans.values() {
        m.schema_breaks.with_label_values(&[plan.name.as_str()]).set(0);
        let label = plan.metric_label();
        let l = [label.as_ref()];
        for c in [&m.records_consumed, &m.consumed_bytes, &m.events_decoded, &m.events_processed, &m.events_late] {
            c.with_label_values(&l);
        }
        m.assigned_partitions.with_label_values(&l).set(0);
        for reason in REASONS {
            m.decode_failures.with_label_values(&[label.as_ref(), reason]);
            m.dead_lettered.with_label_values(&[label.as_ref(), reason]);
        }
    }
    for nfa in &nfas {
        let meta = &nfa.meta;
        let name = meta.name.as_str();
        let version = meta.version.to_string();
        m.pattern_info
            .with_label_values(&[name, &version, &meta.hash, mode_label(nfa), meta.severity.as_str(), &meta.stream])
            .set(1);
        m.matches.with_label_values(&[name]);
        m.alerts.with_label_values(&[name, mode_label(nfa), meta.severity.as_str()]);
        m.timeouts.with_label_values(&[name]);
        m.partial_matches_dropped.with_label_values(&[name]);
        m.state_cache_lookups.with_label_values(&["hit"]);
        m.state_cache_lookups.with_label_values(&["miss"]);
        m.active_partial_matches.with_label_values(&[name]).set(0);
        m.active_keys.with_label_values(&[name]).set(0);
        for (var, pos) in funnel_steps(nfa).filter_map(|(v, p)| v.zip(p)) {
            m.funnel_reached.with_label_values(&[name, var, &pos.to_string()]);
        }
    }
    for out in Output::ALL {
        if out != Output::Timeouts || timeouts {
            m.records_produced.with_label_values(&[out.label()]);
            m.produced_bytes.with_label_values(&[out.label()]);
        }
    }
    for from in ["event_time", "ingest"] {
        m.alert_latency.with_label_values(&[from]);
    }
    for kind in ["assign", "revoke"] {
        m.rebalances.with_label_values(&[kind]);
    }
    for source in ["store", "changelog"] {
        m.restored_partitions.with_label_values(&[source]);
    }
    for result in ["ok", "failed"] {
        m.pattern_reloads.with_label_values(&[result]);
    }
}

impl Worker {
    /// Sets the gauges from the current state: per pattern, per partition, the store, readiness.
    pub(super) fn update_gauges(&mut self, consumer: &BaseConsumer<GroupContext>) {
        self.gauges_at = Instant::now();
        let ends = consumer.context().ends.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let m = &self.metrics;
        let now = now_ms();
        let mut per_pattern: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut assigned: HashMap<String, i64> =
            self.plans.values().map(|p| (p.metric_label().into_owned(), 0)).collect();
        for (topic, parts) in &self.parts {
            for (p, part) in parts {
                let label = part.plan.metric_label();
                let stream = label.as_ref();
                *assigned.entry(stream.to_owned()).or_default() += 1;
                // A draining version counts with its pattern.
                for op in part.all_operators() {
                    let e = per_pattern.entry(op.nfa().meta.name.as_str()).or_default();
                    e.0 += op.active_partial_matches();
                    e.1 += op.active_keys();
                }
                let labels = [stream, &p.to_string()];
                let wm = part.watermark();
                if wm != i64::MIN {
                    m.watermark.with_label_values(&labels).set(wm as f64 / 1000.0);
                    m.watermark_lag.with_label_values(&labels).set(now.saturating_sub(wm) as f64 / 1000.0);
                }
                // The end of the partition as the client's last statistics saw it (no request).
                if let Some(&end) = ends.get(&(topic.clone(), *p)) {
                    m.consumer_lag.with_label_values(&labels).set((end - part.next_offset).max(0));
                }
            }
        }
        for plan in self.plans.values() {
            for nfa in &plan.patterns {
                let (partials, keys) = per_pattern.get(nfa.meta.name.as_str()).copied().unwrap_or_default();
                m.active_partial_matches.with_label_values(&[&nfa.meta.name]).set(partials as i64);
                m.active_keys.with_label_values(&[&nfa.meta.name]).set(keys as i64);
            }
        }
        for (stream, n) in assigned {
            m.assigned_partitions.with_label_values(&[stream.as_str()]).set(n);
        }
        m.state_bytes.set(self.store.size_bytes() as i64);
        let ops = || self.parts.values().flat_map(HashMap::values).flat_map(|p| p.all_operators());
        m.state_cached_keys.set(ops().map(engine::runtime::Operator::cached_keys).sum::<usize>() as i64);
        m.state_memory_bytes.set(ops().map(engine::runtime::Operator::memory_estimate).sum::<usize>() as i64);
        m.ready.set(i64::from(self.health.ready.load(Ordering::Relaxed)));
    }
}
