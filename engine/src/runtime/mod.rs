//! The runtime: run state per key and pattern, the shared buffer, and FlinkCEP-exact ordering.

pub mod buffer;
pub mod dewey;
pub mod fast;
pub mod multi;
pub mod operator;
pub mod pq;
pub mod queue;
pub mod run;
pub mod snapshot;
pub mod split;

pub use multi::{MultiError, MultiOperator, MultiOutput, StartIndex};
pub use operator::{
    due_in_set, snapshot_summary, After, Backing, Config, Drain, FastTier, Key, KeyState, Operator, Output, Stats,
    TierCounts, LANE_SHIFT,
};
pub use run::{Match, MatchEvents, PartialView, RunState, Timeout};
pub use snapshot::SnapshotError;
pub use split::KeyRecords;
