//! `tripline replay`: runs a pattern set over a range of the input topics (read as the service
//! reads them: committed records, decoded through the schema registry) or over an exported file,
//! with the same watermark rules as the service, and writes the alerts as JSON lines: the same
//! records and patterns give the same bytes the service committed. Optionally an audit report
//! (what was read, what ran, what came out, and a digest) and a comparison with another pattern
//! set over the same records.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use crate::audit::{self, Report};
use crate::core::context::Context;
use crate::core::coords::coords;
use crate::core::plan::{Reject, StreamPlan};
use crate::core::range::{bounds, Bound};
use crate::core::tables;
use crate::error::{Error, Result};
use crate::io::files::{read_records, Problem};
use crate::io::reader;
use crate::obs::err;
use crate::obs::progress::Progress;

mod env;
mod input;
mod runner;

pub use env::{choose, Choice, Chosen, Env};
pub use input::{kafka_ranges, read_kafka, Input, Item};
use runner::{feed, Runner};

/// Options of a replay.
#[derive(Debug)]
pub struct Replay<'a> {
    pub patterns: Choice<'a>,
    /// A second set run over the same records, compared with the first.
    pub compare: Option<Choice<'a>>,
    /// An exported file instead of Kafka.
    pub input: Option<&'a Path>,
    /// For Avro input whose record types fit several streams.
    pub stream: Option<&'a str>,
    /// Only this input topic (Kafka).
    pub topic: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub output: &'a Path,
    /// The comparison, one JSON line per alert that is in either set.
    pub diff: Option<&'a Path>,
    /// The audit report: JSON if the name ends in `.json`, else Markdown.
    pub report: Option<&'a Path>,
    pub config: Option<&'a Path>,
    /// The input goes on after its end (a range of a live topic): windows are not closed at the
    /// end, so the alerts are those the running service had emitted after these records.
    /// Always so for Kafka input.
    pub open_end: bool,
}

/// How a replay went, when it ran to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Some input lines or records were rejected (each reported on stderr).
    pub rejected_lines: bool,
}

/// Runs a replay; the alerts, the report and the comparison are written to their files, a
/// summary to stderr.
pub fn run(opts: &Replay<'_>) -> Result<Replayed> {
    let mut env = Env::load(opts.config)?;
    let (from, to) = bounds(opts.from, opts.to, opts.topic, opts.input.is_some())?;
    if opts.diff.is_some() && opts.compare.is_none() {
        return Err(Error::usage("--diff writes a comparison: give the other set with --compare or --compare-set"));
    }
    let a = choose(&mut env, opts.patterns)?;
    let b = opts.compare.map(|c| choose(&mut env, c)).transpose()?;
    for set in std::iter::once(&a.set).chain(b.as_ref().map(|b| &b.set)) {
        for n in &set.nfas {
            if env.catalog.streams.get(&n.meta.stream).is_some_and(|s| s.timestamp_field.is_none()) {
                return Err(Error::usage(format!(
                    "{}: stream `{}` (read by pattern `{}`) has no timestamp_field: replay needs each event's event time",
                    env.path.display(),
                    n.meta.stream,
                    n.meta.name
                )));
            }
        }
    }
    let mut report = Report::new(&a.set, &a.origin);
    let mut runners = vec![Runner::new(a, &env.cfg, &env.catalog)];
    if let Some(b) = b {
        report.compare_with(&b.set, &b.origin);
        runners.push(Runner::new(b, &env.cfg, &env.catalog));
    }
    let mut rejected_lines = false;
    match opts.input {
        Some(file) => {
            report.input_file(file);
            // A file has no recorded context: the config's reference tables (from their files).
            let tables = tables::load(&env.cfg, &env.path)?;
            for r in &mut runners {
                r.tables = tables.clone();
            }
            let records = read_records(file, &env.catalog, opts.stream)?;
            let mut progress = Progress::new("replay", "events", None);
            for (n, record) in records {
                progress.inc(1);
                match record {
                    Ok((stream, partition, event)) => {
                        let offset = coords(event.seq).1;
                        let (source, timestamp, event) = (stream.as_str(), None, Ok(event));
                        let input = Input { stream: source, source, partition, offset, timestamp, event };
                        if let Some(r) = feed(&mut runners, &mut report, input, true, &env.cfg) {
                            rejected_lines = true;
                            err(&format!("{}:{n}: rejected ({}): {}\n", file.display(), r.code, r.message));
                        }
                    }
                    Err(Problem::Fatal(reason)) => return Err(Error::usage(format!("{}: {reason}", file.display()))),
                    Err(Problem::Rejected(reason)) => {
                        rejected_lines = true;
                        err(&format!("{}:{n}: rejected: {reason}\n", file.display()));
                        let source = opts.stream.unwrap_or("-");
                        let event = Err(Reject::new("undecodable", reason));
                        let input =
                            Input { stream: source, source, partition: 0, offset: n as i64, timestamp: None, event };
                        feed(&mut runners, &mut report, input, true, &env.cfg);
                    }
                }
            }
            progress.finish();
        }
        None => {
            let context = env.context()?;
            replay_kafka(&env, opts, from.as_ref(), to.as_ref(), &mut runners, &mut report, context)?;
        }
    }
    let open_end = opts.open_end || opts.input.is_none();
    for r in &mut runners {
        r.finish(open_end);
    }
    report.open_end = open_end;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))
    };
    let a = &runners[0];
    let mut text = String::with_capacity(a.lines.iter().map(|l| l.len() + 1).sum());
    for l in &a.lines {
        text.push_str(l);
        text.push('\n');
    }
    write(opts.output, &text)?;
    report.output(opts.output, &a.lines, &a.counts);
    let mut summary = format!(
        "replayed {} events: {} alert(s), {} late, {} rejected, {} partial match(es) dropped by the budget\n",
        report.events_read(),
        a.lines.len(),
        a.counts.late,
        report.rejected(),
        a.counts.dropped
    );
    for (p, n) in report.alerts_by_pattern() {
        let _ = writeln!(summary, "  {p}: {n}");
    }
    let _ = writeln!(summary, "digest {}", report.digest());
    for m in &a.mismatches {
        let _ = writeln!(summary, "warning: {m}");
    }
    if let [a, b] = runners.as_slice() {
        let diff = audit::diff(&a.lines, &b.lines);
        if let Some(path) = opts.diff {
            write(path, &diff.lines())?;
        }
        summary.push_str(&diff.table());
        report.comparison(diff);
    }
    if let Some(path) = opts.report {
        let is_json = path.extension().is_some_and(|x| x == "json");
        write(path, &if is_json { report.json() } else { report.markdown() })?;
    }
    err(&summary);
    Ok(Replayed { rejected_lines })
}

/// Replays the range of the input topics: partition by partition, in offset order.
fn replay_kafka(
    env: &Env,
    opts: &Replay<'_>,
    from: Option<&Bound>,
    to: Option<&Bound>,
    runners: &mut [Runner],
    report: &mut Report,
    mut context: Context,
) -> Result<()> {
    // The topics of the streams the patterns read.
    let mut topics: BTreeMap<String, Arc<StreamPlan>> = BTreeMap::new();
    for r in runners.iter() {
        for plan in r.plans.values().filter(|p| !p.patterns.is_empty()) {
            topics.entry(plan.topic.clone()).or_insert_with(|| plan.clone());
        }
    }
    let defaults: BTreeMap<(String, i32), i64> =
        runners[0].starts.iter().map(|(k, pos)| (k.clone(), pos.offset)).collect();
    let reader = reader::reader(&env.cfg)?;
    let ranges = kafka_ranges(env, &reader, &mut topics, opts.topic, from, to, &defaults)?;
    report.input_kafka(env.cfg.kafka.bootstrap_servers.as_deref().unwrap_or(""), opts.from, opts.to, &ranges);
    // What the service applied besides the records (wall-clock advances, reference tables),
    // where it applied it; a range starts with the tables in use there.
    for r in &ranges {
        context.start_at(&r.topic, r.partition, r.start);
    }
    if !context.is_empty() {
        tracing::info!(steps = context.len(), "applying the recorded context (wall-clock advances, reference tables)");
    }
    for r in runners.iter_mut() {
        r.context = context.clone();
    }
    read_kafka(env, &reader, &topics, &ranges, &mut |item| match item {
        Item::Record(input) => {
            feed(runners, report, input, false, &env.cfg);
        }
        Item::Marker { topic, partition, offset, marker } => {
            for r in runners.iter_mut() {
                r.mark(topic, partition, offset, marker);
            }
        }
        Item::Done { topic, partition, next } => {
            for r in runners.iter_mut() {
                r.end_of(topic, partition, next);
            }
            report.partition_done(topic, partition, next);
        }
    })
}
