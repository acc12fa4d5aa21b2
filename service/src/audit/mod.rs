//! The audit side of a replay: the report (`--report`, Markdown or JSON: what was read, what
//! ran, what came out, and a digest of the alerts) and the comparison of two pattern sets over
//! the same records (`--compare`). Nothing here reads a clock or the network.

mod compare;
mod report;

pub use compare::{diff, Diff, DiffRow};
pub use report::{digest, Counts, InputPartition, Report};
