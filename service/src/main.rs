//! `tripline`: the command-line entry point (everything is in the library; see `cmd`).

use std::process::ExitCode;

/// mimalloc: the engine allocates and frees small objects per event.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ExitCode::from(tripline_service::cmd::main())
}
