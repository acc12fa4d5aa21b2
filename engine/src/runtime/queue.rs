//! A key's buffered events (FlinkCEP's `elementQueueState`): by timestamp ascending, in arrival
//! order within a timestamp, until the watermark passes them.
//!
//! A sorted ring of (timestamp, events) rather than a `BTreeMap`: events mostly arrive in time
//! order, so an insertion is a push at the back, and the watermark takes from the front; the ring
//! keeps its allocation as it drains, and a timestamp's first event is stored inline.

use std::collections::VecDeque;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::value::Event;

/// The events of one timestamp, in arrival order.
pub type Batch = SmallVec<[Arc<Event>; 1]>;

#[derive(Clone, Debug, Default)]
pub struct Queue {
    slots: VecDeque<(i64, Batch)>,
}

impl Queue {
    pub fn new() -> Self {
        Queue::default()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of distinct timestamps.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Number of events.
    pub fn events(&self) -> usize {
        self.slots.iter().map(|(_, b)| b.len()).sum()
    }

    /// Where timestamp `ts` is, or would be inserted.
    fn find(&self, ts: i64) -> Result<usize, usize> {
        match self.slots.back() {
            None => Err(0),
            Some((last, _)) if *last < ts => Err(self.slots.len()),
            Some((last, _)) if *last == ts => Ok(self.slots.len() - 1),
            _ => self.slots.binary_search_by_key(&ts, |(t, _)| *t),
        }
    }

    /// Appends `event` to its timestamp's events; true if the timestamp was not buffered.
    pub fn push(&mut self, ts: i64, event: Arc<Event>) -> bool {
        match self.find(ts) {
            Ok(i) => {
                self.slots[i].1.push(event);
                false
            }
            Err(i) => {
                let mut batch = Batch::new();
                batch.push(event);
                self.slots.insert(i, (ts, batch));
                true
            }
        }
    }

    /// Sets the events of `ts` (restoring a snapshot).
    pub fn insert(&mut self, ts: i64, events: impl IntoIterator<Item = Arc<Event>>) {
        let batch: Batch = events.into_iter().collect();
        match self.find(ts) {
            Ok(i) => self.slots[i].1 = batch,
            Err(i) => self.slots.insert(i, (ts, batch)),
        }
    }

    /// The earliest buffered timestamp.
    pub fn first_ts(&self) -> Option<i64> {
        self.slots.front().map(|(t, _)| *t)
    }

    /// Takes the events of the earliest timestamp.
    pub fn pop_first(&mut self) -> Option<(i64, Batch)> {
        self.slots.pop_front()
    }

    /// The buffered timestamps, ascending.
    pub fn keys(&self) -> impl Iterator<Item = &i64> + '_ {
        self.slots.iter().map(|(t, _)| t)
    }

    /// Each timestamp's events, by timestamp ascending.
    pub fn values(&self) -> impl Iterator<Item = &[Arc<Event>]> + '_ {
        self.slots.iter().map(|(_, b)| b.as_slice())
    }

    /// (timestamp, events), ascending.
    pub fn iter(&self) -> impl Iterator<Item = (i64, &[Arc<Event>])> + '_ {
        self.slots.iter().map(|(t, b)| (*t, b.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfa::TypeId;

    fn ev(seq: u64, ts: i64) -> Arc<Event> {
        Arc::new(Event { seq, ts, kind: TypeId(0), fields: Box::new([]) })
    }

    #[test]
    fn keeps_timestamps_ascending_and_arrival_order_within_one() {
        let mut q = Queue::new();
        let arrivals = [(1, 10), (2, 12), (3, 10), (4, 11), (5, 12), (6, 9), (7, 13), (8, 11)];
        let mut new = Vec::new();
        for (seq, ts) in arrivals {
            new.push(q.push(ts, ev(seq, ts)));
        }
        assert_eq!(new, [true, true, false, true, false, true, true, false]);
        assert_eq!(q.keys().copied().collect::<Vec<_>>(), [9, 10, 11, 12, 13]);
        assert_eq!(q.events(), 8);
        let seqs: Vec<Vec<u64>> = q.values().map(|l| l.iter().map(|e| e.seq).collect()).collect();
        assert_eq!(seqs, [vec![6], vec![1, 3], vec![4, 8], vec![2, 5], vec![7]]);
        assert_eq!(q.first_ts(), Some(9));
        let (t, batch) = q.pop_first().expect("one");
        assert_eq!((t, batch.len()), (9, 1));
        q.insert(10, [ev(9, 10)]);
        assert_eq!(q.iter().map(|(t, l)| (t, l.len())).collect::<Vec<_>>(), [(10, 1), (11, 2), (12, 2), (13, 1)]);
        q.insert(5, [ev(10, 5), ev(11, 5)]);
        assert_eq!(q.first_ts(), Some(5));
        assert_eq!(q.len(), 5);
    }
}
