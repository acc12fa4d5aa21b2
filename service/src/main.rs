//! `tripline`: the command-line entry point (everything is in the library; see `cmd`).

use std::process::ExitCode;

fn main() -> ExitCode {
    ExitCode::from(tripline_service::cmd::main())
}
