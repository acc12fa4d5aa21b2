//! Every metric the service exports, defined in one place: [`CATALOG`] (name, type, labels, help)
//! is generated from the same table as the [`Metrics`] struct, `docs/metrics.md` is checked
//! against it (`cargo test -p tripline-service metrics`), and the observability test checks that
//! `/metrics` serves exactly these names.
//!
//! Emission: the processing loop never touches these per event. It counts into plain integers
//! ([`Batch`]) and folds them in when a transaction commits, so the counters describe committed
//! work (an aborted batch is counted once, when it is processed again); gauges are set once per
//! batch or, when idle, once a second.

use prometheus::core::Collector;
use prometheus::{Gauge, GaugeVec, Registry};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// One exported metric, as documented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Def {
    pub name: &'static str,
    pub kind: &'static str,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Bucket bounds (seconds) of the alert latency histograms: 5 ms to an hour.
const LATENCY: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];
/// Bucket bounds (seconds) of a transaction commit.
const COMMIT: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Bucket bounds (seconds) of a state restore.
const RESTORE: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Built from a [`Def`].
trait Make: Sized + Collector + Clone + 'static {
    const KIND: &'static str;
    fn make(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> prometheus::Result<Self>;
}

macro_rules! impl_make {
    ($t:ty, $kind:literal, |$o:ident, $labels:ident, $buckets:ident| $body:expr) => {
        impl Make for $t {
            const KIND: &'static str = $kind;
            fn make(name: &str, help: &str, $labels: &[&str], $buckets: &[f64]) -> prometheus::Result<Self> {
                let $o = Opts::new(name, help);
                $body
            }
        }
    };
}
impl_make!(IntCounter, "counter", |o, _l, _b| IntCounter::with_opts(o));
impl_make!(IntCounterVec, "counter", |o, l, _b| IntCounterVec::new(o, l));
impl_make!(IntGauge, "gauge", |o, _l, _b| IntGauge::with_opts(o));
impl_make!(IntGaugeVec, "gauge", |o, l, _b| IntGaugeVec::new(o, l));
impl_make!(Gauge, "gauge", |o, _l, _b| Gauge::with_opts(o));
impl_make!(GaugeVec, "gauge", |o, l, _b| GaugeVec::new(o, l));
impl_make!(Histogram, "histogram", |o, _l, b| Histogram::with_opts(HistogramOpts::from(o).buckets(b.to_vec())));
impl_make!(HistogramVec, "histogram", |o, l, b| HistogramVec::new(HistogramOpts::from(o).buckets(b.to_vec()), l));

macro_rules! metrics {
    ($($field:ident: $t:ty = $name:literal [$($label:literal),*] $(buckets $b:expr,)? $help:literal;)*) => {
        /// The service's metrics (see the module docs and `docs/metrics.md`).
        #[derive(Clone, Debug)]
        pub struct Metrics {
            pub registry: Registry,
            $(#[doc = $help] pub $field: $t,)*
        }

        impl Metrics {
            /// Every metric, registered in a registry of its own.
            pub fn new() -> Metrics {
                let registry = Registry::new();
                $(
                    let $field = <$t as Make>::make($name, $help, &[$($label),*], { let b: &[&[f64]] = &[$($b)?]; b.concat() }.as_slice())
                        .expect("a valid metric definition");
                    registry.register(Box::new($field.clone())).expect("metric names are unique");
                )*
                Metrics { registry, $($field,)* }
            }
        }

        /// What `/metrics` serves, in definition order.
        pub const CATALOG: &[Def] = &[$(Def { name: $name, kind: <$t as Make>::KIND, labels: &[$($label),*], help: $help },)*];
    };
}

metrics! {
    records_consumed: IntCounterVec = "tripline_records_consumed_total" ["stream"]
        "Records read from a stream's input topic, good or bad.";
    consumed_bytes: IntCounterVec = "tripline_consumed_bytes_total" ["stream"]
        "Payload bytes of the records read.";
    events_decoded: IntCounterVec = "tripline_events_decoded_total" ["stream"]
        "Records decoded into events (Confluent wire format, schema resolved through the registry).";
    decode_failures: IntCounterVec = "tripline_decode_failures_total" ["stream", "reason"]
        "Records that could not be decoded, by dead-letter reason code.";
    events_processed: IntCounterVec = "tripline_events_processed_total" ["stream"]
        "Events fed to the patterns (decoded, admitted and on time).";
    events_late: IntCounterVec = "tripline_events_late_total" ["stream"]
        "Events at or behind their partition's watermark, sent to the late topic.";
    dead_lettered: IntCounterVec = "tripline_records_dead_lettered_total" ["stream", "reason"]
        "Records sent to the dead-letter topic (decode failures and admission rejections), by reason code.";
    matches: IntCounterVec = "tripline_matches_total" ["pattern"]
        "Complete matches found by the engine.";
    alerts: IntCounterVec = "tripline_alerts_total" ["pattern", "mode", "severity"]
        "Alerts committed: to the alerts topic (mode live) or the shadow alerts topic (mode shadow).";
    timeouts: IntCounterVec = "tripline_timeouts_total" ["pattern"]
        "Partial matches whose window passed before they completed.";
    partial_matches_dropped: IntCounterVec = "tripline_partial_matches_dropped_total" ["pattern"]
        "Partial matches dropped (oldest first) by the per-key budget engine.max_partial_matches_per_key.";
    funnel_reached: IntCounterVec = "tripline_funnel_reached_total" ["pattern", "step", "position"]
        "Partial matches that reached a step of a pattern (took their first event into the variable `step`, the `position`-th of the pattern); with tripline_matches_total, the pattern's funnel.";
    records_produced: IntCounterVec = "tripline_records_produced_total" ["output"]
        "Records committed to an output topic: alerts, shadow_alerts, late, dead_letter, timeouts, changelog, pattern_sets or repartition (records and watermark markers written to repartition topics).";
    produced_bytes: IntCounterVec = "tripline_produced_bytes_total" ["output"]
        "Key and payload bytes of the records committed to an output topic.";
    transactions_committed: IntCounter = "tripline_transactions_committed_total" []
        "Kafka transactions committed (outputs, changelog and offsets of one commit interval).";
    transactions_aborted: IntCounter = "tripline_transactions_aborted_total" []
        "Kafka transactions aborted; the work is rewound to the last commit and done again.";
    commit_duration: Histogram = "tripline_commit_duration_seconds" [] buckets COMMIT,
        "Time to commit one transaction: changelog, waiting for deliveries, offsets and the commit.";
    last_commit: Gauge = "tripline_last_commit_timestamp_seconds" []
        "Wall-clock time of the last committed transaction (unix seconds; 0 before the first).";
    alert_latency: HistogramVec = "tripline_alert_latency_seconds" ["from"] buckets LATENCY,
        "Time from an alert's event time (from=event_time), or from the Kafka timestamp of the record that triggered it (from=ingest), to the commit that published it.";
    active_partial_matches: IntGaugeVec = "tripline_active_partial_matches" ["pattern"]
        "Partial matches held, over this instance's partitions.";
    active_keys: IntGaugeVec = "tripline_active_keys" ["pattern"]
        "Keys holding partial matches or buffered events, over this instance's partitions.";
    state_bytes: IntGauge = "tripline_state_bytes" []
        "Size of the local state store (RocksDB's estimate of live data plus memtables).";
    state_memory_bytes: IntGauge = "tripline_state_memory_bytes" []
        "Estimated bytes of the key states held decoded in memory (the state cache), over this instance's partitions.";
    state_cached_keys: IntGauge = "tripline_state_cached_keys" []
        "Key states (pattern and key) held decoded in memory; state.cache_size bounds it at each commit.";
    state_cache_lookups: IntCounterVec = "tripline_state_cache_lookups_total" ["result"]
        "Key states the engine needed: found in memory (result=hit) or read from the local store (result=miss).";
    state_evictions: IntCounter = "tripline_state_evictions_total" []
        "Unchanged key states dropped from memory (least recently used first) to keep within state.cache_size.";
    watermark: GaugeVec = "tripline_watermark_seconds" ["stream", "partition"]
        "A partition's event-time watermark (unix seconds); absent until its first event.";
    watermark_lag: GaugeVec = "tripline_watermark_lag_seconds" ["stream", "partition"]
        "Wall clock minus the partition's watermark.";
    consumer_lag: IntGaugeVec = "tripline_consumer_lag_records" ["stream", "partition"]
        "Records in the partition after the service's position (high watermark minus position).";
    assigned_partitions: IntGaugeVec = "tripline_assigned_partitions" ["stream"]
        "Input partitions assigned to this instance.";
    rebalances: IntCounterVec = "tripline_rebalances_total" ["kind"]
        "Consumer-group rebalances seen: partitions assigned (kind=assign) or revoked (kind=revoke).";
    restored_partitions: IntCounterVec = "tripline_restored_partitions_total" ["source"]
        "Partitions whose state was restored on assignment, from the local store (source=store) or the changelog (source=changelog).";
    restore_records: IntCounter = "tripline_restore_records_total" []
        "Changelog records read while restoring state.";
    restore_remaining: IntGaugeVec = "tripline_restore_records_remaining" ["topic", "partition"]
        "Per assigned input partition: changelog records (of its changelog partition) still to read while its state is restored from the changelog; 0 once it is restored.";
    restore_in_progress: IntGauge = "tripline_restore_in_progress" []
        "1 while the state of newly assigned partitions is being restored.";
    restore_duration: Histogram = "tripline_restore_duration_seconds" [] buckets RESTORE,
        "Time to restore the state of one assignment (all its partitions).";
    ready: IntGauge = "tripline_ready" []
        "1 when every assigned partition's state is restored (as /readyz).";
    pattern_reloads: IntCounterVec = "tripline_pattern_reloads_total" ["result"]
        "Pattern set switches (a SIGHUP reload or a deployment followed): result=ok when the new set was activated, failed when it was rejected and the running set kept.";
    schema_breaks: IntGaugeVec = "tripline_schema_breaks" ["stream"]
        "Per stream: over the writer schemas met on it, how many (schema, pattern, field) reads of the running patterns they break: a field the writer schema lacks or types otherwise than the stream's schema (its records are refused, or read with the stream schema's defaults). The log names them. 0 when none does.";
    build_info: IntGaugeVec = "tripline_build_info" ["version", "git_hash", "pattern_set"]
        "Always 1: the build's version and git commit, and the hash of the running pattern set.";
    pattern_info: IntGaugeVec = "tripline_pattern_info" ["pattern", "version", "hash", "mode", "severity", "stream"]
        "1 per running pattern: its declared version, content hash, mode, severity and stream.";
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The registry in Prometheus's text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The git commit the binary was built from (`unknown` outside a checkout).
pub const GIT_HASH: &str = env!("TRIPLINE_GIT_HASH");

/// `docs/metrics.md`'s table, as the catalog renders it.
pub fn markdown_table() -> String {
    let mut s = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for d in CATALOG {
        let labels = if d.labels.is_empty() {
            "—".to_owned()
        } else {
            d.labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
        };
        s.push_str(&format!("| `{}` | {} | {} | {} |\n", d.name, d.kind, labels, d.help.replace('|', "\\|")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &str = "<!-- catalog: begin (generated from service/src/obs/metrics.rs) -->\n";
    const END: &str = "<!-- catalog: end -->";

    /// `docs/metrics.md` lists exactly the catalog. `UPDATE_DOCS=1` rewrites its table.
    #[test]
    fn the_metrics_doc_is_the_catalog() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let doc = std::fs::read_to_string(path).expect("docs/metrics.md");
        let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
            panic!("docs/metrics.md has no `{}` ... `{END}` section", BEGIN.trim());
        };
        let table = &doc[b + BEGIN.len()..e];
        let want = markdown_table();
        if table != want {
            if std::env::var_os("UPDATE_DOCS").is_some() {
                let new = format!("{}{BEGIN}{want}{}", &doc[..b], &doc[e..]);
                std::fs::write(path, new).expect("write docs/metrics.md");
            } else {
                panic!(
                    "docs/metrics.md is out of date with service/src/obs/metrics.rs; rerun with UPDATE_DOCS=1\n{want}"
                );
            }
        }
    }

    /// Names are unique and follow Prometheus's conventions; label-less metrics are served at
    /// once under the catalog's type (labelled ones appear with their first label set; the
    /// observability test checks the whole of `/metrics` against the catalog).
    #[test]
    fn the_catalog_follows_the_conventions() {
        let m = Metrics::new();
        for f in m.registry.gather() {
            let d = CATALOG.iter().find(|d| d.name == f.name()).expect("served metrics are in the catalog");
            assert_eq!(format!("{:?}", f.get_field_type()).to_lowercase(), d.kind, "{}", d.name);
        }
        let served = m.registry.gather().len();
        assert_eq!(served, CATALOG.iter().filter(|d| d.labels.is_empty()).count());
        let mut names: Vec<&str> = CATALOG.iter().map(|d| d.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len(), "duplicate names");
        for d in CATALOG {
            assert!(d.name.starts_with("tripline_"), "{}", d.name);
            assert_eq!(
                d.kind == "counter",
                d.name.ends_with("_total"),
                "{}: counters and only counters end in _total",
                d.name
            );
            assert!(d.help.ends_with('.'), "{}", d.name);
        }
    }
}
