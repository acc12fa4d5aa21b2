//! `tripline`: the command-line entry point.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod bench;
mod check;
mod config;
mod conformance;
mod decode;
mod replay;
mod source;

/// Exit status: everything valid.
pub const EXIT_OK: u8 = 0;
/// Exit status: the input has problems (diagnostics were printed).
pub const EXIT_INVALID: u8 = 1;
/// Exit status: the command could not run (bad arguments, missing config, unreadable paths).
pub const EXIT_USAGE: u8 = 2;

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
    Check {
        /// Files or directories to check.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Configuration file with the streams (default: $TRIPLINE_CONFIG, then ./tripline.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run a FlinkCEP conformance corpus (JSON cases) and compare the results.
    Conformance {
        /// Corpus files (a JSON array of cases each).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Also print a line for every passing case.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Replay an exported file of events through a pattern set and write the alerts.
    Replay {
        /// Pattern files or directories.
        #[arg(long, required = true, value_name = "PATH")]
        patterns: Vec<PathBuf>,
        /// Events: JSON lines ({"stream": ..., "type": ..., "value": {...}}) or an Avro object
        /// container file of one stream's records.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// The stream of an Avro input, when its record types fit several streams.
        #[arg(long, value_name = "NAME")]
        stream: Option<String>,
        /// Where to write the alerts (JSON lines).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Configuration file with the streams (default: $TRIPLINE_CONFIG, then ./tripline.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Throughput benchmark against FlinkCEP on shared/bench/flinkcep's generated input.
    Bench {
        /// The generated events (`events_N.csv`: seq,key,ts,type,amount).
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// P1 or P2 (testdata/bench/).
        #[arg(long, value_name = "P1|P2")]
        pattern: String,
        /// Write the matches here, in the harness's line format, sorted.
        #[arg(long, value_name = "FILE")]
        matches: Option<PathBuf>,
    },
    /// Explain compiled patterns.
    Explain {
        /// Print the compiled automaton of every pattern in FILE.
        #[arg(long, value_name = "FILE")]
        nfa: PathBuf,
        /// Only this pattern of the file.
        #[arg(long, value_name = "NAME")]
        pattern: Option<String>,
        /// Configuration file with the streams (default: $TRIPLINE_CONFIG, then ./tripline.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Writes to stdout, ignoring a closed pipe (`tripline check | head` must not panic).
pub fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Writes to stderr.
pub fn err(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let code = match cli.command {
        Command::Check { paths, config, format } => check::run_check(&paths, config.as_deref(), format),
        Command::Conformance { files, verbose } => conformance::run(&files, verbose),
        Command::Bench { input, pattern, matches } => bench::run(&input, &pattern, matches.as_deref()),
        Command::Replay { patterns, input, output, config, stream } => replay::run(&replay::Replay {
            patterns: &patterns,
            input: &input,
            output: &output,
            config: config.as_deref(),
            stream: stream.as_deref(),
        }),
        Command::Explain { nfa, pattern, config } => check::run_explain(&nfa, pattern.as_deref(), config.as_deref()),
    };
    ExitCode::from(code)
}
