//! `tripline replay`: a pattern set over a range of the input topics or an export
//! ([`crate::replay`]).

use std::path::PathBuf;

use super::Status;
use crate::error::Result;
use crate::explain::choice;
use crate::replay::{Choice, Replay};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Pattern files or directories (default: the config's `service.patterns`).
    #[arg(long, value_name = "PATH", conflicts_with = "pattern_set")]
    patterns: Vec<PathBuf>,
    /// A pattern set the service recorded (its hash, or a unique prefix), read from the
    /// pattern sets topic: exactly the patterns that ran, from where they took effect.
    #[arg(long, value_name = "HASH")]
    pattern_set: Option<String>,
    /// Every pattern set the service recorded, each switched in on each partition where the
    /// service switched it (deploys and reloads included): what the service ran, over time.
    #[arg(long, conflicts_with_all = ["patterns", "pattern_set", "input"])]
    as_recorded: bool,
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
}

pub fn run(a: Args) -> Result<Status> {
    let replayed = crate::replay::run(&Replay {
        patterns: if a.as_recorded {
            Choice::AsRecorded
        } else {
            choice(&a.patterns, &a.pattern_set).unwrap_or(Choice::Configured)
        },
        compare: choice(&a.compare, &a.compare_set),
        input: a.input.as_deref(),
        stream: a.stream.as_deref(),
        topic: a.topic.as_deref(),
        from: a.from.as_deref(),
        to: a.to.as_deref(),
        output: &a.output,
        diff: a.diff.as_deref(),
        report: a.report.as_deref(),
        config: a.config.as_deref(),
        open_end: a.open_end,
    })?;
    Ok(if replayed.rejected_lines { Status::Invalid } else { Status::Ok })
}
