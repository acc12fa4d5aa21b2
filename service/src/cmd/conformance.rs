//! `tripline conformance FILE...`: runs FlinkCEP conformance corpora ([`testkit::conformance`])
//! and prints one line per failing case (every case with `--verbose`), then `N passed, M failed`.

use std::path::PathBuf;

use testkit::conformance::Runner;

use super::Status;
use crate::error::{Error, Result};
use crate::obs::out;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Corpus files (a JSON array of cases each).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Also print a line for every passing case.
    #[arg(long, short)]
    verbose: bool,
}

pub fn run(args: Args) -> Result<Status> {
    let runner = Runner::new().map_err(Error::usage)?;
    let (mut passed, mut failed, mut fast) = (0, 0, 0);
    for file in &args.files {
        let report = runner.run_file(file).map_err(Error::usage)?;
        for case in &report.cases {
            if args.verbose || case.outcome.is_err() {
                out(&format!("{case}\n"));
            }
        }
        passed += report.passed();
        failed += report.failed();
        fast += report.fast_tier();
    }
    out(&format!("{fast} cases ran on the fast tier too (their patterns are chains)\n"));
    out(&format!("{passed} passed, {failed} failed\n"));
    Ok(if failed == 0 { Status::Ok } else { Status::Invalid })
}
