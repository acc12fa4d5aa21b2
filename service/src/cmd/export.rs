//! `tripline export`: a stream's committed records as replay input ([`crate::tools::export`]).

use std::path::PathBuf;

use super::Status;
use crate::error::Result;
use crate::obs::{err, init_logging};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The stream (as named in the config).
    #[arg(long, value_name = "NAME")]
    stream: String,
    /// Where to write the JSON lines.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<Status> {
    init_logging();
    let (n, bad) = crate::tools::export::export(args.config.as_deref(), &args.stream, &args.output)?;
    err(&format!("exported {n} records ({bad} left out: the service dead-letters them)\n"));
    Ok(Status::Ok)
}
