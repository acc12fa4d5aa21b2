//! Tools around the service: `tripline deploy`, `rollback` and `status` (the fleet through the
//! pattern sets topic: [`fleet`]), `tripline produce` (JSON-lines events to Avro records, schemas
//! registered), `tail` (a topic's committed records), `export` (a stream's committed records,
//! decoded, as JSON lines with their coordinates: the input of a replay), `bench` (the
//! engine's throughput on the FlinkCEP benchmark's input; `bench scale` and `bench patterns`) and `bench kafka` (the service end to
//! end against a broker: [`bench_kafka`], with its harness in [`bench_env`]).

pub mod bench;
pub mod bench_env;
pub mod bench_kafka;
pub mod bench_patterns;
pub mod bench_scale;
pub mod examples;
pub mod export;
pub mod fleet;
pub mod produce;
pub mod tail;

use std::path::{Path, PathBuf};

use crate::core::config::{self, Config};
use crate::error::Result;

/// The configuration (the `--config` path, `$TRIPLINE_CONFIG` or ./tripline.toml) and its path.
fn load(config: Option<&Path>) -> Result<(Config, PathBuf)> {
    let path = config::locate(config)?;
    let cfg = Config::load_with_env(&path)?;
    Ok((cfg, path))
}
