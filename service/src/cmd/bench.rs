//! `tripline bench`: the engine's throughput on the FlinkCEP benchmark's input
//! ([`crate::tools::bench`]; `scripts/bench-flinkcep` runs both engines).

use std::path::PathBuf;

use super::Status;
use crate::error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The generated events (`events_N.csv`: seq,key,ts,type,amount).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// P1 or P2 (testdata/bench/).
    #[arg(long, value_name = "P1|P2")]
    pattern: String,
    /// Write the matches here, in the harness's line format, sorted.
    #[arg(long, value_name = "FILE")]
    matches: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<Status> {
    crate::tools::bench::run(&args.input, &args.pattern, args.matches.as_deref())?;
    Ok(Status::Ok)
}
