//! `tripline produce`: JSON-lines events to Avro records ([`crate::tools::produce`]).

use std::path::PathBuf;

use super::Status;
use crate::error::Result;
use crate::obs::{err, init_logging};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The events.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Partitions of the topics created here.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<Status> {
    init_logging();
    let n = crate::tools::produce::produce(args.config.as_deref(), &args.input, args.partitions)?;
    err(&format!("produced {n} records\n"));
    Ok(Status::Ok)
}
