//! Tripline's service: the `tripline` command line and everything it runs, in rooms that show
//! the layers (ARCHITECTURE.md has the rule of each, and `tests/layers.rs` checks them):
//!
//! - [`cmd`]: one file per subcommand (its clap arguments and dispatch); the only place that
//!   turns an [`error::Error`] into text and an exit status.
//! - [`serve`]: `tripline run`, the service loop, transactions, rebalances, reloads.
//! - [`explain`], [`replay`], [`audit`]: explanations, replays and their reports.
//! - [`tools`]: `produce`, `tail`, `export`, `bench`.
//! - [`io`]: the adapters (Kafka, the schema registry and Avro, files, RocksDB, HTTP).
//! - [`core`]: the Kafka-free core: configuration, stream plans, one partition's engine state,
//!   the changelog encoding, the alert JSON, pattern sets.
//! - [`obs`]: logs, metrics, progress, terminal output; [`error`]: the one error type.

pub mod audit;
pub mod cmd;
pub mod core;
pub mod error;
pub mod explain;
pub mod io;
pub mod obs;
pub mod replay;
pub mod serve;
pub mod tools;
