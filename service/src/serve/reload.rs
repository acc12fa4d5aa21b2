//! Switching the running pattern set between two transactions, with the activation recorded
//! and replaced versions draining: a reload (SIGHUP: the files compiled again) or a deployment
//! followed from the pattern sets topic (`follow`).

use std::collections::HashSet;
use std::sync::Arc;

use rdkafka::consumer::BaseConsumer;

use super::batch::init_metrics;
use super::rebalance::GroupContext;
use super::Output;
use super::Worker;
use crate::core::pattern_sets::{compile_files, set_hash, Deployment, PatternSet};
use crate::core::plan::{build_plans, expose};
use crate::error::{Error, Result};
use crate::io::kafka::produce;
use crate::obs::metrics::Metrics;

impl Worker {
    /// Compiles the pattern files again and, if they are good, activates them
    /// ([`Worker::activate`], reason `reload`). A set that does not compile is refused and the
    /// running set stays. Errors are only those that stop the service.
    pub(super) fn reload(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<()> {
        let src = &self.sources;
        let mut diagnostics = Vec::new();
        let compiled = compile_files(&src.pattern_paths, &src.catalog, &mut |d| diagnostics.push(d));
        for d in &diagnostics {
            tracing::error!("pattern reload: {d}");
        }
        match compiled {
            Ok(set) => self.activate(consumer, set, "reload", None),
            Err(e) => {
                let why = match diagnostics.len() {
                    0 => e.to_string(),
                    n => format!("{n} error(s) in the pattern files (logged above, with file:line:column)"),
                };
                refuse(&self.metrics, "reload", &why);
                Ok(())
            }
        }
    }

    /// Activates `set` at a transaction boundary: the open transaction commits first, the
    /// activation (`reason`, and the deployment it follows) is recorded in a transaction of its
    /// own, patterns whose content hash did not change keep their state, versions that are gone
    /// finish their partial matches (they drain, see `Partition::with_plan`), and new ones start
    /// at each partition's watermark. A set that would change which topics are read is refused
    /// and the running set stays. Errors are only those that stop the service.
    pub(super) fn activate(
        &mut self,
        consumer: &BaseConsumer<GroupContext>,
        set: PatternSet,
        reason: &str,
        deployment: Option<Deployment>,
    ) -> Result<()> {
        let src = &self.sources;
        let nfas = set.nfas.clone();
        let plans = match build_plans(&src.streams, &src.config_path, &src.catalog, &nfas, &self.group) {
            Ok(p) => expose(p, &set.live_keys),
            Err(e) => {
                refuse(&self.metrics, reason, &e.to_string());
                return Ok(());
            }
        };
        if !plans.keys().eq(self.plans.keys()) {
            let (old, new): (Vec<_>, Vec<_>) = (self.plans.keys().collect(), plans.keys().collect());
            let why = format!(
                "the new set reads topics {new:?}, the running one {old:?}: restart the service to change the topics"
            );
            refuse(&self.metrics, reason, &why);
            return Ok(());
        }
        let running: Vec<Arc<engine::Nfa>> = self.plans.values().flat_map(|p| p.patterns.iter().cloned()).collect();
        let (old_hash, new_hash) = (set_hash(&running), set.hash());
        // Switch between transactions: everything read so far ran under the old set.
        let _ = self.commit_or_rewind(consumer)?;
        if self.in_txn {
            return Err(Error::failed("the transaction before the switch did not commit"));
        }
        // The record of the new set's activation, in a transaction of its own: the set takes
        // effect at each partition's current position and watermark. Versions that go drain
        // (see `Partition::with_plan`); their state goes once they hold nothing.
        {
            let mut activation = self.activation(&set, reason, None);
            activation.deployment = deployment.clone();
            let record = serde_json::to_vec(&activation).unwrap_or_default();
            let key = set.hash();
            let result = self.transaction_of_its_own(|w| {
                produce(&w.producer, &w.pattern_sets_topic, Some(0), Some(key.as_bytes()), Some(&record), None)
            });
            if let Err(e) = result {
                refuse(&self.metrics, reason, &format!("cannot record the new set: {e}"));
                return Ok(());
            }
            self.metrics.records_produced.with_label_values(&[Output::PatternSets.label()]).inc();
        }
        self.library.add(&set);
        for (t, parts) in &mut self.parts {
            let plan = &plans[t];
            *parts = std::mem::take(parts)
                .into_iter()
                .map(|(p, part)| {
                    let at = part.next_offset;
                    let mut part = part.with_plan(plan.clone(), at);
                    part.set = new_hash.clone();
                    (p, part)
                })
                .collect();
        }
        // The metrics: pattern gauges of patterns that are gone, the information metrics.
        let names: HashSet<&str> = nfas.iter().map(|n| n.meta.name.as_str()).collect();
        for n in running.iter().filter(|n| !names.contains(n.meta.name.as_str())) {
            let _ = self.metrics.active_partial_matches.remove_label_values(&[&n.meta.name]);
            let _ = self.metrics.active_keys.remove_label_values(&[&n.meta.name]);
        }
        self.metrics.pattern_info.reset();
        self.metrics.build_info.reset();
        init_metrics(&self.metrics, &plans, self.sources.timeouts);
        self.plans = plans;
        self.set = set;
        self.gate_writers();
        // A reload runs the files: no deployment any more.
        self.deployment = deployment;
        self.metrics.pattern_reloads.with_label_values(&["ok"]).inc();
        let watermarks: Vec<String> = self
            .parts
            .iter()
            .flat_map(|(t, m)| {
                m.iter().map(move |(p, part)| format!("{t}/{p}@{}:{}", part.next_offset, part.watermark()))
            })
            .collect();
        let versions: Vec<String> =
            nfas.iter().map(|n| format!("{}@{}:{}", n.meta.name, n.meta.version, n.meta.hash)).collect();
        tracing::info!(
            reason, from = %old_hash, to = %new_hash, patterns = %versions.join(" "), positions = %watermarks.join(" "),
            "pattern set activated"
        );
        self.update_gauges(consumer);
        Ok(())
    }
}

/// A new set is refused: counted, and logged with why.
fn refuse(m: &Metrics, reason: &str, why: &str) {
    m.pattern_reloads.with_label_values(&["failed"]).inc();
    tracing::error!("pattern {reason} refused, the running patterns stay: {why}");
}
