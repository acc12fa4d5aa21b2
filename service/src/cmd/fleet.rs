//! `tripline deploy`, `tripline rollback` and `tripline status`: the fleet through the pattern
//! sets topic ([`crate::tools::fleet`]).

use std::path::PathBuf;
use std::time::Duration;

use super::{Format, Status};
use crate::error::{Error, Result};
use crate::obs::{err, init_logging, out};
use crate::tools::fleet;

#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// Pattern files or directories of *.tl files: the whole set every instance is to run.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// A canary: the new versions are live on this percentage of the keys (chosen by a hash of
    /// the key) and in shadow on the others, where the versions they replace stay live.
    #[arg(long, value_name = "PCT", conflicts_with = "shadow")]
    canary: Option<f64>,
    /// Run the new versions in shadow beside the running ones, which stay live: their alerts go
    /// to the shadow alerts topic.
    #[arg(long)]
    shadow: bool,
    /// Wait until every partition runs the set (or this many seconds passed: exit 1), and say
    /// how long the switch took.
    #[arg(long, value_name = "SECS")]
    wait: Option<f64>,
    /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// The recorded set to run again (its hash, or a unique prefix of 6 or more digits);
    /// default: the most recent set the group ran before the one it runs.
    #[arg(value_name = "SET")]
    set: Option<String>,
    /// Wait until every partition runs the set (or this many seconds passed: exit 1).
    #[arg(long, value_name = "SECS")]
    wait: Option<f64>,
    /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Wait until every partition runs the latest deployment (or this many seconds passed:
    /// exit 1).
    #[arg(long, value_name = "SECS")]
    wait: Option<f64>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Configuration file (default: $TRIPLINE_CONFIG, then ./tripline.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn seconds(wait: Option<f64>) -> Result<Option<Duration>> {
    match wait {
        Some(s) if !(s.is_finite() && s >= 0.0) => Err(Error::usage(format!("--wait {s}: a number of seconds >= 0"))),
        w => Ok(w.map(Duration::from_secs_f64)),
    }
}

pub fn deploy(a: DeployArgs) -> Result<Status> {
    init_logging();
    let wait = seconds(a.wait)?;
    let exposure = match (a.canary, a.shadow) {
        (Some(pct), _) if !(pct.is_finite() && pct > 0.0 && pct < 100.0) => {
            return Err(Error::usage(format!("--canary {pct}: a percentage of keys above 0 and below 100")))
        }
        (Some(pct), _) => fleet::Exposure::Canary(((pct * 100.0).round() as u16).clamp(1, 9_999)),
        (None, true) => fleet::Exposure::Shadow,
        (None, false) => fleet::Exposure::Full,
    };
    let published = fleet::deploy(a.config.as_deref(), &a.paths, exposure)?;
    err(&published.summary());
    follow(a.config, wait)
}

pub fn rollback(a: RollbackArgs) -> Result<Status> {
    init_logging();
    let wait = seconds(a.wait)?;
    let published = fleet::rollback(a.config.as_deref(), a.set.as_deref())?;
    err(&published.summary());
    follow(a.config, wait)
}

/// With `--wait`: the status once every partition switched, or the pending ones (exit 1).
fn follow(config: Option<PathBuf>, wait: Option<Duration>) -> Result<Status> {
    let Some(limit) = wait else { return Ok(Status::Ok) };
    let fleet = fleet::wait(config.as_deref(), limit)?;
    out(&fleet.text());
    Ok(if fleet.pending == 0 { Status::Ok } else { Status::Invalid })
}

pub fn status(a: StatusArgs) -> Result<Status> {
    init_logging();
    let fleet = match seconds(a.wait)? {
        Some(limit) => fleet::wait(a.config.as_deref(), limit)?,
        None => fleet::status(a.config.as_deref())?,
    };
    out(&match a.format {
        Format::Text => fleet.text(),
        Format::Json => fleet.json(),
    });
    Ok(if a.wait.is_some() && fleet.pending > 0 { Status::Invalid } else { Status::Ok })
}
