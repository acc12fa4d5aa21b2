//! `tripline tail`: a topic's committed records ([`crate::tools::tail`]).

use std::path::PathBuf;
use std::time::Duration;

use super::Status;
use crate::error::Result;
use crate::obs::init_logging;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The topic.
    #[arg(long, value_name = "TOPIC")]
    topic: String,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// Stop when nothing new came for this many seconds.
    #[arg(long, value_name = "SECS")]
    idle: Option<f64>,
    /// Prefix each line with partition/offset and the record key.
    #[arg(long)]
    keys: bool,
    /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<Status> {
    init_logging();
    let idle = args.idle.map(|s| Duration::from_secs_f64(s.max(0.0)));
    crate::tools::tail::tail(args.config.as_deref(), &args.topic, args.max, idle, args.keys)?;
    Ok(Status::Ok)
}
