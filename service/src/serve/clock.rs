//! Wall-clock advances of idle partitions (streams with `advance_when_idle`, see
//! `core::context`): the only place the service's results depend on the wall clock, so each
//! advance is written to the context topic in the transaction that applies it.

use std::time::Instant;

use rdkafka::consumer::BaseConsumer;

use super::rebalance::GroupContext;
use super::repartition::at_end;
use super::{Out, Output, Worker};
use crate::core::context::Record;
use crate::error::Result;
use crate::obs::now_ms;

impl Worker {
    /// Advances the watermark of every clock-advancing partition that read no record for its
    /// stream's `idle_timeout` and has nothing left to read, at most once per `idle_timeout`,
    /// and only where an advance can release something (see `Partition::waits_for_time`). Its
    /// alerts, timeouts and the advance's record go into the open transaction (one is opened),
    /// with the partition's state and offset.
    pub(super) fn advance_idle(&mut self, consumer: &BaseConsumer<GroupContext>) -> Result<()> {
        if self.repartition.clocks.is_empty() || self.pending.is_some() {
            return Ok(());
        }
        let now = Instant::now();
        let mut quiet = Vec::new();
        for (t, &timeout) in &self.repartition.clocks {
            let Some(parts) = self.repartition.activity.get(t) else { continue };
            quiet.extend(
                parts
                    .iter()
                    .filter(|(_, a)| now.duration_since(a.last) >= timeout && a.next_advance.is_none_or(|n| now >= n))
                    .map(|(p, _)| (t.clone(), *p)),
            );
        }
        if quiet.is_empty() {
            return Ok(());
        }
        for (t, p) in at_end(self, consumer, quiet) {
            let timeout = self.repartition.clocks[&t];
            if let Some(a) = self.repartition.activity.get_mut(&t).and_then(|m| m.get_mut(&p)) {
                a.next_advance = Some(now + timeout);
            }
            let Some(part) = self.parts.get_mut(&t).and_then(|m| m.get_mut(&p)) else { continue };
            if !part.waits_for_time() {
                continue;
            }
            let clock = now_ms();
            let mut emit = Vec::new();
            let Some(watermark) = part.advance_clock(clock, &mut emit) else { continue };
            let before = part.next_offset;
            // In the open transaction: its offset and state are written again, its markers go
            // out (a forwarding partition), and so do the advance and what it released.
            part.advanced = true;
            self.begin();
            tracing::debug!(topic = %t, partition = p, watermark, alerts = emit.len(), "idle: watermark advanced by the wall clock");
            self.publish_emits(&t, p, before, emit, None)?;
            self.record_context(&Record::Advance { topic: t.clone(), partition: p, before, clock, watermark });
        }
        Ok(())
    }

    /// Puts a context record in the outbox (for the open transaction).
    pub(super) fn record_context(&mut self, r: &Record) {
        let payload = r.to_json().into_bytes();
        let key = r.key().into_bytes();
        self.batch.produced(Output::Context, Some(&key), Some(&payload));
        self.outbox.push(Out { to: Output::Context, at: None, key: Some(key), payload: Some(payload), headers: None });
    }
}
