//! `tripline`: the command-line entry point.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod audit;
mod avro_in;
mod bench;
mod check;
mod config;
mod conformance;
mod decode;
mod explain;
mod explain_cmd;
mod http;
mod kafka;
mod kafka_range;
mod metrics;
mod pattern_sets;
mod pipeline;
mod progress;
mod replay;
mod run;
mod source;
mod store;
mod times;
mod tools;

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
    /// Replay a range of the input topics (or an exported file) through a pattern set and write
    /// the alerts: the same bytes the service committed for the same records and patterns.
    Replay {
        /// Pattern files or directories (default: the config's `service.patterns`).
        #[arg(long, value_name = "PATH", conflicts_with = "pattern_set")]
        patterns: Vec<PathBuf>,
        /// A pattern set the service recorded (its hash, or a unique prefix), read from the
        /// pattern sets topic: exactly the patterns that ran, from where they took effect.
        #[arg(long, value_name = "HASH")]
        pattern_set: Option<String>,
        /// Events from a file instead of Kafka: JSON lines ({"stream", "type", "value"}, as
        /// `tripline export` writes them) or an Avro object container file of one stream.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// The stream of an Avro input, when its record types fit several streams.
        #[arg(long, value_name = "NAME", requires = "input")]
        stream: Option<String>,
        /// Only this input topic (default: every topic the patterns read).
        #[arg(long, value_name = "TOPIC")]
        topic: Option<String>,
        /// Start: a record time (RFC 3339 or epoch ms; offsets found with offsets_for_times) or
        /// offsets PARTITION:OFFSET,... (default: the beginning, or where a recorded set took effect).
        #[arg(long, value_name = "TIME|OFFSETS", allow_hyphen_values = true)]
        from: Option<String>,
        /// End, exclusive, in the same forms (default: the end of the topics when the replay starts).
        #[arg(long, value_name = "TIME|OFFSETS", allow_hyphen_values = true)]
        to: Option<String>,
        /// Where to write the alerts (JSON lines).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Write an audit report: JSON if FILE ends in .json, else Markdown.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Also run these pattern files over the same records and compare (A: --patterns, B: these).
        #[arg(long, value_name = "PATH", conflicts_with = "compare_set")]
        compare: Vec<PathBuf>,
        /// Compare with a recorded pattern set instead.
        #[arg(long, value_name = "HASH")]
        compare_set: Option<String>,
        /// Write the comparison here, one JSON line per alert in either set.
        #[arg(long, value_name = "FILE")]
        diff: Option<PathBuf>,
        /// Configuration file with the streams (default: $TRIPLINE_CONFIG, then ./tripline.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// A file's input goes on after its end (a range of a live topic): do not close the
        /// windows at the end. Kafka ranges are always replayed so.
        #[arg(long)]
        open_end: bool,
    },
    /// Run the service: consume the streams, run the patterns, publish alerts exactly once.
    Run {
        /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Produce JSON-lines events ({"stream","type","value"}) as Avro records, registering the
    /// streams' schemas (subject `<topic>-value`) and creating missing topics.
    Produce {
        /// The events.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Partitions of the topics created here.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the committed records of a topic (e.g. the alerts), one value per line.
    Tail {
        /// The topic.
        #[arg(long, value_name = "TOPIC")]
        topic: String,
        /// Stop after this many records.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
        /// Stop when nothing new came for this many seconds.
        #[arg(long, value_name = "SECS")]
        idle: Option<f64>,
        /// Prefix each line with partition/offset and the record key.
        #[arg(long)]
        keys: bool,
        /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Export a stream's committed records, decoded, as JSON lines with their partition and
    /// offset: the input of `tripline replay`.
    Export {
        /// The stream (as named in the config).
        #[arg(long, value_name = "NAME")]
        stream: String,
        /// Where to write the JSON lines.
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
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
    /// List the metrics `tripline run` serves on /metrics (docs/metrics.md's table).
    Metrics,
    /// Explain an alert (which events matched which step, with the values), why a key did or
    /// did not alert over a range, or the compiled automaton of patterns.
    Explain {
        /// Print the compiled automaton of every pattern in FILE.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["alert", "key"], required_unless_present_any = ["alert", "key"])]
        nfa: Option<PathBuf>,
        /// The alert to explain (its "alert_id").
        #[arg(long, value_name = "ID", conflicts_with = "key")]
        alert: Option<String>,
        /// Find the alert in this file (a replay's output) instead of the alerts topics.
        #[arg(long, value_name = "FILE", requires = "alert")]
        alerts: Option<PathBuf>,
        /// Trace this key of --pattern over a range: what it matched, how far each partial
        /// match got, and the step it failed or timed out at.
        #[arg(long, value_name = "KEY", requires = "pattern")]
        key: Option<String>,
        /// With --key: the pattern to trace. With --nfa: only this pattern of the file.
        #[arg(long, value_name = "NAME")]
        pattern: Option<String>,
        /// Pattern files (default: the recorded set that raised the alert, or the config's patterns).
        #[arg(long, value_name = "PATH", conflicts_with = "pattern_set")]
        patterns: Vec<PathBuf>,
        /// A pattern set the service recorded (hash or unique prefix).
        #[arg(long, value_name = "HASH")]
        pattern_set: Option<String>,
        /// Events from a file (JSON lines or Avro) instead of Kafka.
        #[arg(long, value_name = "FILE", conflicts_with = "nfa")]
        input: Option<PathBuf>,
        /// With --key: only this input topic.
        #[arg(long, value_name = "TOPIC", requires = "key")]
        topic: Option<String>,
        /// With --key: start of the range (RFC 3339, epoch ms, or PARTITION:OFFSET,...).
        #[arg(long, value_name = "TIME|OFFSETS", requires = "key", allow_hyphen_values = true)]
        from: Option<String>,
        /// With --key: end of the range, exclusive.
        #[arg(long, value_name = "TIME|OFFSETS", requires = "key", allow_hyphen_values = true)]
        to: Option<String>,
        /// With --key and --input: the file goes on after its end (windows stay open).
        #[arg(long, requires = "key")]
        open_end: bool,
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

/// Log lines to stderr; `RUST_LOG` filters (default: info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs a tool command: its result, errors printed with their context.
fn tool<T>(f: impl FnOnce() -> anyhow::Result<T>, done: impl FnOnce(T)) -> u8 {
    init_logging();
    match f() {
        Ok(v) => {
            done(v);
            EXIT_OK
        }
        Err(e) => {
            err(&format!("error: {e:#}\n"));
            EXIT_INVALID
        }
    }
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
        Command::Replay {
            patterns,
            pattern_set,
            input,
            stream,
            topic,
            from,
            to,
            output,
            report,
            compare,
            compare_set,
            diff,
            config,
            open_end,
        } => {
            use explain_cmd::choice;
            replay::run(&replay::Replay {
                patterns: choice(&patterns, &pattern_set).unwrap_or(replay::Choice::Configured),
                compare: choice(&compare, &compare_set),
                input: input.as_deref(),
                stream: stream.as_deref(),
                topic: topic.as_deref(),
                from: from.as_deref(),
                to: to.as_deref(),
                output: &output,
                diff: diff.as_deref(),
                report: report.as_deref(),
                config: config.as_deref(),
                open_end,
            })
        }
        Command::Run { config } => run::run(config.as_deref()),
        Command::Produce { input, partitions, config } => {
            tool(|| tools::produce(config.as_deref(), &input, partitions), |n| err(&format!("produced {n} records\n")))
        }
        Command::Tail { topic, max, idle, keys, config } => tool(
            || {
                let idle = idle.map(|s| std::time::Duration::from_secs_f64(s.max(0.0)));
                tools::tail(config.as_deref(), &topic, max, idle, keys)
            },
            |_| {},
        ),
        Command::Export { stream, output, config } => tool(
            || tools::export(config.as_deref(), &stream, &output),
            |(n, bad)| err(&format!("exported {n} records ({bad} left out: the service dead-letters them)\n")),
        ),
        Command::Metrics => {
            out(&metrics::markdown_table());
            EXIT_OK
        }
        Command::Explain {
            nfa,
            alert,
            alerts,
            key,
            pattern,
            patterns,
            pattern_set,
            input,
            topic,
            from,
            to,
            open_end,
            config,
        } => {
            init_logging();
            let src = explain_cmd::Sources {
                patterns: explain_cmd::choice(&patterns, &pattern_set),
                input: input.as_deref(),
                config: config.as_deref(),
            };
            match (nfa, alert, key) {
                (Some(nfa), _, _) => check::run_explain(&nfa, pattern.as_deref(), config.as_deref()),
                (_, Some(id), _) => explain_cmd::alert(&id, alerts.as_deref(), &src),
                (_, _, Some(key)) => explain_cmd::key(
                    &explain_cmd::KeyOptions {
                        key: &key,
                        pattern: pattern.as_deref().unwrap_or_default(),
                        topic: topic.as_deref(),
                        from: from.as_deref(),
                        to: to.as_deref(),
                        open_end,
                    },
                    &src,
                ),
                (None, None, None) => EXIT_USAGE,
            }
        }
    };
    ExitCode::from(code)
}
