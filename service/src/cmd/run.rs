//! `tripline run`: the service ([`crate::serve`]).

use std::path::PathBuf;

use super::Status;
use crate::error::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<Status> {
    // The service logs its own errors.
    Ok(match crate::serve::run(args.config.as_deref()) {
        Ok(()) => Status::Ok,
        Err(e) => Status::Reported(e.kind()),
    })
}
