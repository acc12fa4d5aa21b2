//! The command line: the `tripline` subcommands, one file each with its arguments (clap) and
//! its dispatch to the rooms that do the work. The only place that turns an [`Error`] into text
//! on stderr and an exit status.

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::{Error, Kind, EXIT_INVALID, EXIT_OK, EXIT_USAGE};
use crate::obs::err;

mod bench;
mod check;
mod conformance;
mod explain;
mod export;
mod fleet;
mod fmt;
mod metrics;
mod produce;
mod replay;
mod run;
mod tail;
mod test;

#[derive(Parser, Debug)]
#[command(
    name = "tripline",
    version,
    about = "Complex-event processing over Kafka: patterns in, exactly-once alerts out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `check` prints its findings.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Format {
    /// Human-readable diagnostics with the source line and a caret.
    #[default]
    Text,
    /// One JSON document, for editors and CI.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check pattern files (and directories of *.tl files) against the configured stream schemas.
    Check(check::Args),
    /// Run each pattern file's examples (`examples/NAME.events.jsonl`) and compare the alerts
    /// with the expected ones (`examples/NAME.alerts.jsonl`): 0 all pass, 1 one fails, 2 one
    /// cannot run.
    Test(test::Args),
    /// Rewrite pattern files in the canonical layout (comments kept, meaning unchanged: the
    /// content hashes are the same); `--check` for CI.
    Fmt(fmt::Args),
    /// Run a FlinkCEP conformance corpus (JSON cases) and compare the results.
    Conformance(conformance::Args),
    /// Replay a range of the input topics (or an exported file) through a pattern set and write
    /// the alerts: the same bytes the service committed for the same records and patterns.
    Replay(replay::Args),
    /// Run the service: consume the streams, run the patterns, publish alerts exactly once.
    Run(run::Args),
    /// Produce JSON-lines events ({"stream","type","value"}) as Avro records, registering the
    /// streams' schemas (subject `<topic>-value`) and creating missing topics.
    Produce(produce::Args),
    /// Print the committed records of a topic (e.g. the alerts), one value per line.
    Tail(tail::Args),
    /// Export a stream's committed records, decoded, as JSON lines with their partition and
    /// offset: the input of `tripline replay`.
    Export(export::Args),
    /// Throughput benchmark against FlinkCEP on shared/bench/flinkcep's generated input; `bench
    /// kafka`: the service end to end against a Kafka broker (scripts/bench-kafka).
    Bench(bench::Args),
    /// List the metrics `tripline run` serves on /metrics (docs/metrics.md's table).
    Metrics,
    /// Explain an alert (which events matched which step, with the values), why a key did or
    /// did not alert over a range, or the compiled automaton of patterns.
    Explain(explain::Args),
    /// Check, compile and publish a pattern set to the pattern sets topic: every instance of
    /// the group switches to it at its next transaction boundary.
    Deploy(fleet::DeployArgs),
    /// Publish an earlier recorded pattern set again (default: the one before the running one).
    Rollback(fleet::RollbackArgs),
    /// Which pattern set each partition and instance of the group runs, and since where.
    Status(fleet::StatusArgs),
}

/// The pattern files a command works on: paths, and the config that declares the streams.
#[derive(clap::Args, Debug)]
pub struct PatternFiles {
    /// Pattern files, or directories of `*.tl` files (default: the config's `service.patterns`).
    #[arg(value_name = "PATH")]
    paths: Vec<std::path::PathBuf>,
    /// Configuration file with the streams (default: $TRIPLINE_CONFIG, then ./tripline.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

impl PatternFiles {
    /// The configuration, its path, and the paths given (or the config's `service.patterns`,
    /// relative to it).
    fn resolve(&self) -> Result<(crate::core::config::Config, std::path::PathBuf, Vec<std::path::PathBuf>), Error> {
        let path = crate::core::config::locate(self.config.as_deref())?;
        let cfg = crate::core::config::Config::load_with_env(&path)?;
        let paths = if self.paths.is_empty() {
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            cfg.service.patterns.iter().map(|p| base.join(p)).collect()
        } else {
            self.paths.clone()
        };
        Ok((cfg, path, paths))
    }
}

/// How a command that ran to its end went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Everything valid: exit status 0.
    Ok,
    /// The input has problems, already reported (diagnostics, rejected lines, failing cases):
    /// exit status 1.
    Invalid,
    /// The command failed and said so itself (the service logs its errors): exit by the kind.
    Reported(Kind),
}

impl Status {
    fn exit_code(self) -> u8 {
        match self {
            Status::Ok => EXIT_OK,
            Status::Invalid => EXIT_INVALID,
            Status::Reported(kind) => kind.exit_code(),
        }
    }
}

/// Parses the command line and runs the command; the process exit status.
pub fn main() -> u8 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    match dispatch(cli.command) {
        Ok(status) => status.exit_code(),
        Err(e) => report(&e),
    }
}

fn dispatch(command: Command) -> Result<Status, Error> {
    match command {
        Command::Check(args) => check::run(args),
        Command::Test(args) => test::run(args),
        Command::Fmt(args) => fmt::run(args),
        Command::Conformance(args) => conformance::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Run(args) => run::run(args),
        Command::Produce(args) => produce::run(args),
        Command::Tail(args) => tail::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Metrics => metrics::run(),
        Command::Explain(args) => explain::run(args),
        Command::Deploy(args) => fleet::deploy(args),
        Command::Rollback(args) => fleet::rollback(args),
        Command::Status(args) => fleet::status(args),
    }
}

/// Prints `error: ...` and gives the exit status of the error's kind.
fn report(e: &Error) -> u8 {
    err(&format!("error: {e}\n"));
    e.kind().exit_code()
}
