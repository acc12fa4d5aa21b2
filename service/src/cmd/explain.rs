//! `tripline explain`: an alert, a key over a range ([`crate::explain`]), or the compiled
//! automaton of pattern files (`--nfa`, [`super::check`]).

use std::path::PathBuf;

use super::{check, Status};
use crate::error::{Error, Result};
use crate::explain::{choice, explain_alert, explain_key, KeyOptions, Sources};
use crate::obs::{init_logging, out};

#[derive(clap::Args, Debug)]
pub struct Args {
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
}

pub fn run(a: Args) -> Result<Status> {
    init_logging();
    let src = Sources {
        patterns: choice(&a.patterns, &a.pattern_set),
        input: a.input.as_deref(),
        config: a.config.as_deref(),
    };
    let text = match (a.nfa, a.alert, a.key) {
        (Some(nfa), _, _) => return check::explain_nfa(&nfa, a.pattern.as_deref(), a.config.as_deref()),
        (_, Some(id), _) => explain_alert(&id, a.alerts.as_deref(), &src)?,
        (_, _, Some(key)) => explain_key(
            &KeyOptions {
                key: &key,
                pattern: a.pattern.as_deref().unwrap_or_default(),
                topic: a.topic.as_deref(),
                from: a.from.as_deref(),
                to: a.to.as_deref(),
                open_end: a.open_end,
            },
            &src,
        )?,
        (None, None, None) => return Err(Error::usage("give --nfa FILE, --alert ID or --key KEY")),
    };
    out(&text);
    Ok(Status::Ok)
}
