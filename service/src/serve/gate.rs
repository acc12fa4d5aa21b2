//! The schema gate in the service: every writer schema met on a stream is checked against the
//! running patterns of the stream ([`crate::core::schema_gate`]) when it is first met and again
//! whenever the pattern set changes; one that breaks a pattern is logged with the fields and
//! counted in `tripline_schema_breaks{stream}` (the `TriplineWriterSchemaBreaksPatterns` alert).

use std::sync::Arc;

use super::Worker;
use crate::core::schema_gate::breaks;

impl Worker {
    /// Takes the writer schemas the decoder met since the last call and checks them.
    pub(super) fn gate_new_writers(&mut self) {
        let new = self.avro.take_new_writers();
        if new.is_empty() {
            return;
        }
        for (stream, id, schema) in new {
            match dsl::StreamSchema::from_avro(&stream, &schema, None) {
                Ok(s) => self.writers_seen.push((stream, id, Arc::new(s))),
                // Records of a schema that is no stream schema at all are refused one by one
                // (dead letters with the reason): nothing to gate.
                Err(e) => tracing::debug!(stream, id, "writer schema not gated: {e}"),
            }
        }
        self.gate_writers();
    }

    /// Checks every writer schema met against the running patterns; sets the gauge.
    pub(super) fn gate_writers(&mut self) {
        let mut per_stream: std::collections::BTreeMap<&str, i64> =
            self.plans.values().map(|p| (p.name.as_str(), 0)).collect();
        for (stream, id, writer) in &self.writers_seen {
            let Some(plan) = self.plans.values().find(|p| &p.name == stream) else { continue };
            let found = breaks(plan, writer);
            if found.is_empty() {
                continue;
            }
            let what: Vec<String> = found.iter().map(ToString::to_string).collect();
            tracing::error!(
                stream,
                schema_id = id,
                breaks = found.len(),
                "a writer schema on the stream breaks running patterns: {}",
                what.join("; ")
            );
            *per_stream.entry(stream.as_str()).or_default() += found.len() as i64;
        }
        self.metrics.schema_breaks.reset();
        for (stream, n) in per_stream {
            self.metrics.schema_breaks.with_label_values(&[stream]).set(n);
        }
    }
}
