//! `tripline metrics`: the table of the metrics `tripline run` serves (docs/metrics.md's).

use super::Status;
use crate::error::Result;
use crate::obs::{metrics, out};

pub fn run() -> Result<Status> {
    out(&metrics::markdown_table());
    Ok(Status::Ok)
}
