//! `tripline replay`: runs a pattern set over a range of the input topics (read as the service
//! reads them: committed records, decoded through the schema registry) or over an exported file,
//! with the same watermark rules as the service, and writes the alerts as JSON lines: the same
//! records and patterns give the same bytes the service committed. Optionally an audit report
//! (what was read, what ran, what came out, and a digest) and a comparison with another pattern
//! set over the same records.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::runtime::{Config as OpConfig, Key};
use engine::{Nfa, Value};
use rdkafka::message::Message;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::audit::{self, Report};
use crate::config::{self, Config};
use crate::kafka_range::{self, Bound, PartReader, Read};
use crate::pattern_sets::{self, PatternSet};
use crate::pipeline::{admit, coords, seq_of, Emit, Partition, Reject, StreamPlan};
use crate::{decode, err, out, source, EXIT_INVALID, EXIT_OK, EXIT_USAGE};

/// Which patterns a replay runs.
#[derive(Clone, Copy, Debug)]
pub enum Choice<'a> {
    /// Pattern files and directories.
    Files(&'a [PathBuf]),
    /// A set the service recorded (hash or unique prefix), from the pattern sets topic.
    Recorded(&'a str),
    /// The config's `service.patterns`.
    Configured,
}

/// Options of a replay.
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

pub(crate) type Failure = (u8, String);

pub(crate) fn usage(msg: impl std::fmt::Display) -> Failure {
    (EXIT_USAGE, format!("error: {msg}"))
}

pub fn run(opts: &Replay<'_>) -> u8 {
    match replay(opts) {
        Ok(code) => code,
        Err((code, msg)) => {
            err(&format!("{msg}\n"));
            code
        }
    }
}

/// Compiles the pattern files; diagnostics go to stdout.
pub fn compile_patterns(paths: &[PathBuf], catalog: &dsl::Catalog) -> Result<PatternSet, Failure> {
    compile_reporting(paths, catalog, &mut |d| out(&format!("{d}\n")))
}

/// Compiles pattern files (and directories of them) against `catalog`; each diagnostic goes to
/// `report`. The error: an exit status and a one-line message.
pub fn compile_reporting(
    paths: &[PathBuf],
    catalog: &dsl::Catalog,
    report: &mut dyn FnMut(String),
) -> Result<PatternSet, Failure> {
    let files = source::expand(paths).map_err(usage)?;
    let mut sources = Vec::new();
    let mut unreadable = 0;
    for f in &files {
        match source::read(f) {
            Ok(s) => sources.push(s),
            Err(d) => {
                report(d.render().trim_end().to_owned());
                unreadable += 1;
            }
        }
    }
    let compiled = compile_sources(sources, catalog, report);
    match compiled {
        Err((code, _)) if unreadable > 0 && code == EXIT_USAGE => Err((EXIT_INVALID, errors(unreadable))),
        Err((EXIT_INVALID, m)) if unreadable > 0 => {
            let n: usize = m.split_whitespace().find_map(|w| w.parse().ok()).unwrap_or(0);
            Err((EXIT_INVALID, errors(n + unreadable)))
        }
        Ok(_) if unreadable > 0 => Err((EXIT_INVALID, errors(unreadable))),
        other => other,
    }
}

fn errors(n: usize) -> String {
    format!("error: the patterns have {n} error(s); nothing was replayed")
}

/// Compiles pattern sources against `catalog` into a set sorted by name.
pub fn compile_sources(
    sources: Vec<dsl::SourceFile>,
    catalog: &dsl::Catalog,
    report: &mut dyn FnMut(String),
) -> Result<PatternSet, Failure> {
    let mut set = PatternSet::default();
    let mut bad = 0;
    let mut compiled = Vec::new();
    for src in sources {
        let result = dsl::compile_source(&src, catalog);
        for d in &result.diagnostics {
            report(d.render());
        }
        bad += result.diagnostics.len();
        let file = set.sources.len();
        compiled.extend(result.patterns.into_iter().map(|p| (Arc::new(p.nfa), file)));
        set.sources.push((src.name.clone(), src.text.clone()));
    }
    if bad > 0 {
        return Err((EXIT_INVALID, errors(bad)));
    }
    if compiled.is_empty() {
        return Err((EXIT_USAGE, "error: no patterns found".to_owned()));
    }
    compiled.sort_by(|a, b| a.0.meta.name.cmp(&b.0.meta.name));
    (set.nfas, set.file_of) = compiled.into_iter().unzip();
    Ok(set)
}

/// The configuration a replay runs under.
pub(crate) struct Env {
    pub cfg: Config,
    pub path: PathBuf,
    pub catalog: dsl::Catalog,
    /// The Kafka reader, made when first needed.
    pub reader: Option<kafka_range::Reader>,
    /// The pattern sets the service recorded, read when first needed.
    pub activations: Option<Vec<pattern_sets::Activation>>,
}

impl Env {
    /// Loads the configuration (the `--config` path, `$TRIPLINE_CONFIG` or ./tripline.toml).
    pub fn load(config: Option<&Path>) -> Result<Env, Failure> {
        let path = config::locate(config).map_err(|e| usage(format!("{e:#}")))?;
        let cfg = Config::load_with_env(&path).map_err(|e| usage(format!("{e:#}")))?;
        let catalog = cfg.catalog(&path).map_err(|e| usage(format!("{e:#}")))?;
        Ok(Env { cfg, path, catalog, reader: None, activations: None })
    }

    /// Reads the activation records of the pattern sets topic (once; in `self.activations`).
    pub fn activations(&mut self) -> Result<(), Failure> {
        if self.activations.is_some() {
            return Ok(());
        }
        let topic = self.cfg.outputs.pattern_sets_topic.clone();
        self.reader()?;
        let reader = self.reader.as_ref().expect("made above");
        let mut activations = Vec::new();
        for (p, o, bytes) in kafka_range::read_all(reader, &self.cfg, &topic).map_err(usage)? {
            match serde_json::from_slice::<pattern_sets::Activation>(&bytes) {
                Ok(a) => activations.push(a),
                Err(e) => tracing::warn!("{topic}/{p}@{o} is not an activation record: {e}"),
            }
        }
        self.activations = Some(activations);
        Ok(())
    }

    pub fn reader(&mut self) -> Result<&kafka_range::Reader, Failure> {
        if self.reader.is_none() {
            self.reader = Some(kafka_range::reader(&self.cfg).map_err(usage)?);
        }
        Ok(self.reader.as_ref().expect("made above"))
    }
}

/// A pattern set to run, where it came from, and (for a recorded set) where it took effect.
pub(crate) struct Chosen {
    pub set: PatternSet,
    pub origin: String,
    pub starts: BTreeMap<(String, i32), pattern_sets::Position>,
}

pub(crate) fn choose(env: &mut Env, choice: Choice<'_>) -> Result<Chosen, Failure> {
    let base = env.path.parent().unwrap_or(Path::new(".")).to_owned();
    match choice {
        Choice::Files(paths) => {
            let set = compile_patterns(paths, &env.catalog)?;
            let origin = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            Ok(Chosen { set, origin: format!("files {origin}"), starts: BTreeMap::new() })
        }
        Choice::Configured => {
            let paths: Vec<PathBuf> = env.cfg.service.patterns.iter().map(|p| base.join(p)).collect();
            let set = compile_patterns(&paths, &env.catalog)?;
            Ok(Chosen { set, origin: format!("the patterns of {}", env.path.display()), starts: BTreeMap::new() })
        }
        Choice::Recorded(hash) => {
            pattern_sets::check_hash(hash).map_err(usage)?;
            let topic = env.cfg.outputs.pattern_sets_topic.clone();
            env.activations()?;
            let activations = env.activations.as_deref().unwrap_or_default();
            let found = pattern_sets::recorded(activations, hash, &topic, &env.catalog).map_err(usage)?;
            Ok(Chosen {
                origin: format!("pattern set {} as recorded in topic `{topic}`", found.set.hash()),
                set: found.set,
                starts: found.starts,
            })
        }
    }
}

/// One pattern set running over the records: the service's per-partition state and what it
/// emitted.
struct Runner {
    /// By stream name.
    plans: BTreeMap<String, Arc<StreamPlan>>,
    op_config: OpConfig,
    /// By stream, then partition.
    parts: BTreeMap<String, BTreeMap<i32, Partition>>,
    /// Recorded starts by (topic, partition): offset and watermark.
    starts: BTreeMap<(String, i32), pattern_sets::Position>,
    emit: Vec<Emit>,
    /// The alert lines, in the order they were raised.
    lines: Vec<String>,
    counts: audit::Counts,
}

impl Runner {
    fn new(chosen: Chosen, cfg: &Config, catalog: &dsl::Catalog) -> Runner {
        let op_config =
            OpConfig { max_partial_matches_per_key: cfg.engine.max_partial_matches_per_key, ..OpConfig::default() };
        let mut plans = BTreeMap::new();
        for (name, s) in &cfg.streams {
            if let Some(schema) = catalog.streams.get(name).cloned() {
                plans.insert(name.clone(), StreamPlan::new(name, s, schema, &chosen.set.nfas));
            }
        }
        Runner {
            plans,
            op_config,
            parts: BTreeMap::new(),
            starts: chosen.starts,
            emit: Vec::new(),
            lines: Vec::new(),
            counts: audit::Counts::default(),
        }
    }

    /// Feeds one decoded record at `offset` of `partition` of `stream`; an admission problem is
    /// returned (the service dead-letters the record).
    fn feed(
        &mut self,
        stream: &str,
        partition: i32,
        offset: i64,
        event: engine::Event,
        cfg: &Config,
    ) -> Option<Reject> {
        let plan = self.plans.get(stream)?;
        if let Err(r) = admit(plan, &event, cfg.service.min_event_time, cfg.service.max_event_time) {
            return Some(r);
        }
        if !self.parts.contains_key(stream) {
            self.parts.insert(stream.to_owned(), BTreeMap::new());
        }
        let parts = self.parts.get_mut(stream).expect("inserted above");
        let part = parts.entry(partition).or_insert_with(|| {
            let mut part = Partition::new(plan.clone(), partition, self.op_config).without_change_tracking();
            // Started where the recorded set took effect: its watermark then.
            if let Some(pos) = self.starts.get(&(plan.topic.clone(), partition)).filter(|p| p.offset == offset) {
                part.resume_at(pos.watermark.unwrap_or(i64::MIN));
            }
            part
        });
        if part.process(event, &mut self.emit) {
            self.counts.processed += 1;
        } else {
            self.counts.late += 1;
        }
        self.take_alerts();
        None
    }

    fn take_alerts(&mut self) {
        for e in self.emit.drain(..) {
            if let Emit::Alert { json, .. } = e {
                self.lines.push(json);
            }
        }
    }

    /// The end of the input: windows close unless it goes on.
    fn finish(&mut self, open_end: bool) {
        for part in self.parts.values_mut().flat_map(BTreeMap::values_mut) {
            if !open_end {
                part.finish(&mut self.emit);
            }
            self.counts.dropped += part.dropped_partial_matches();
        }
        self.take_alerts();
    }
}

/// What reading a Kafka range gives.
pub(crate) enum Item<'a> {
    Record(Input<'a>),
    /// A partition's range is done; `next` is the first offset not read.
    Done {
        topic: &'a str,
        partition: i32,
        next: i64,
    },
}

/// A record of the input: where it is, and the event or why it is not one.
pub(crate) struct Input<'a> {
    pub stream: &'a str,
    /// The topic (Kafka) or the stream (a file).
    pub source: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka record timestamp.
    pub timestamp: Option<i64>,
    pub event: Result<engine::Event, Reject>,
}

fn replay(opts: &Replay<'_>) -> Result<u8, Failure> {
    let mut env = Env::load(opts.config)?;
    let (from, to) = kafka_range::bounds(opts.from, opts.to, opts.topic, opts.input.is_some()).map_err(usage)?;
    if opts.diff.is_some() && opts.compare.is_none() {
        return Err(usage("--diff writes a comparison: give the other set with --compare or --compare-set"));
    }
    let a = choose(&mut env, opts.patterns)?;
    let b = opts.compare.map(|c| choose(&mut env, c)).transpose()?;
    for set in std::iter::once(&a.set).chain(b.as_ref().map(|b| &b.set)) {
        for n in &set.nfas {
            if env.catalog.streams.get(&n.meta.stream).is_some_and(|s| s.timestamp_field.is_none()) {
                return Err(usage(format!(
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
            let records = read_records(file, &env.catalog, opts.stream)?;
            let mut progress = crate::progress::Progress::new("replay", "events", None);
            for (n, record) in records {
                progress.inc(1);
                match record {
                    Ok((stream, partition, event)) => {
                        let offset = coords(event.seq).1;
                        let (source, timestamp, event) = (stream.as_str(), None, Ok(event));
                        let input = Input { stream: source, source, partition, offset, timestamp, event };
                        if let Some(r) = feed(&mut runners, &mut report, input, &env.cfg) {
                            rejected_lines = true;
                            err(&format!("{}:{n}: rejected ({}): {}\n", file.display(), r.code, r.message));
                        }
                    }
                    Err(Fatal(reason)) => return Err(usage(format!("{}: {reason}", file.display()))),
                    Err(Rejected(reason)) => {
                        rejected_lines = true;
                        err(&format!("{}:{n}: rejected: {reason}\n", file.display()));
                        let source = opts.stream.unwrap_or("-");
                        let event = Err(Reject::new("undecodable", reason));
                        let input =
                            Input { stream: source, source, partition: 0, offset: n as i64, timestamp: None, event };
                        feed(&mut runners, &mut report, input, &env.cfg);
                    }
                }
            }
            progress.finish();
        }
        None => replay_kafka(&env, opts, from.as_ref(), to.as_ref(), &mut runners, &mut report)?,
    }
    let open_end = opts.open_end || opts.input.is_none();
    for r in &mut runners {
        r.finish(open_end);
    }
    report.open_end = open_end;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| usage(format!("cannot write {}: {e}", path.display())))
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
    Ok(if rejected_lines { EXIT_INVALID } else { EXIT_OK })
}

/// Feeds one input record to every runner; returns the first runner's admission problem.
fn feed(runners: &mut [Runner], report: &mut Report, input: Input<'_>, cfg: &Config) -> Option<Reject> {
    let Input { stream, source, partition, offset, timestamp, event } = input;
    let ts = event.as_ref().ok().map(|e| e.ts);
    report.read(source, partition, offset, timestamp, ts);
    let problem = match event {
        Err(r) => Some(r),
        Ok(event) => match runners {
            [a] => a.feed(stream, partition, offset, event, cfg),
            [a, rest @ ..] => {
                let problem = a.feed(stream, partition, offset, event.clone(), cfg);
                for r in rest {
                    r.feed(stream, partition, offset, event.clone(), cfg);
                }
                problem
            }
            [] => None,
        },
    };
    if let Some(r) = &problem {
        report.dead_letter(r.code);
    }
    problem
}

/// Replays the range of the input topics: partition by partition, in offset order.
fn replay_kafka(
    env: &Env,
    opts: &Replay<'_>,
    from: Option<&Bound>,
    to: Option<&Bound>,
    runners: &mut [Runner],
    report: &mut Report,
) -> Result<(), Failure> {
    // The topics of the streams the patterns read.
    let mut topics: BTreeMap<String, Arc<StreamPlan>> = BTreeMap::new();
    for r in runners.iter() {
        for plan in r.plans.values().filter(|p| !p.patterns.is_empty()) {
            topics.entry(plan.topic.clone()).or_insert_with(|| plan.clone());
        }
    }
    let defaults: BTreeMap<(String, i32), i64> =
        runners[0].starts.iter().map(|(k, pos)| (k.clone(), pos.offset)).collect();
    let reader = kafka_range::reader(&env.cfg).map_err(usage)?;
    let ranges = kafka_ranges(env, &reader, &mut topics, opts.topic, from, to, &defaults)?;
    report.input_kafka(env.cfg.kafka.bootstrap_servers.as_deref().unwrap_or(""), opts.from, opts.to, &ranges);
    read_kafka(env, &reader, &topics, &ranges, &mut |item| match item {
        Item::Record(input) => {
            feed(runners, report, input, &env.cfg);
        }
        Item::Done { topic, partition, next } => report.partition_done(topic, partition, next),
    })
}

/// The ranges to read of `topics` (narrowed to `only`), checked against the cluster.
pub(crate) fn kafka_ranges(
    env: &Env,
    reader: &kafka_range::Reader,
    topics: &mut BTreeMap<String, Arc<StreamPlan>>,
    only: Option<&str>,
    from: Option<&Bound>,
    to: Option<&Bound>,
    defaults: &BTreeMap<(String, i32), i64>,
) -> Result<Vec<kafka_range::PartRange>, Failure> {
    if let Some(t) = only {
        if !topics.contains_key(t) {
            let read: Vec<&str> = topics.keys().map(String::as_str).collect();
            return Err(usage(format!("no pattern here reads topic `{t}` (they read: {})", read.join(", "))));
        }
        topics.retain(|k, _| k == t);
    }
    let names: Vec<&str> = topics.keys().map(String::as_str).collect();
    kafka_range::resolve(reader, &env.cfg, &names, from, to, defaults).map_err(usage)
}

/// Reads `ranges` (partition by partition, in offset order), decoding each record through the
/// schema registry as the service does, with progress; `on` gets each record, and the end of
/// each partition's range.
pub(crate) fn read_kafka(
    env: &Env,
    reader: &kafka_range::Reader,
    topics: &BTreeMap<String, Arc<StreamPlan>>,
    ranges: &[kafka_range::PartRange],
    on: &mut dyn FnMut(Item<'_>),
) -> Result<(), Failure> {
    let mut avro = crate::run::avro_for(&env.cfg, &env.path, topics.values()).map_err(|e| usage(format!("{e:#}")))?;
    let total: i64 = ranges.iter().map(|r| r.end - r.start).sum();
    let mut progress = crate::progress::Progress::new("replay", "records", Some(total as u64));
    let registry = env.cfg.registry.url.clone().unwrap_or_default();
    for (i, range) in ranges.iter().enumerate() {
        let plan = topics[&range.topic].clone();
        let mut reader = PartReader::new(reader, range).map_err(usage)?;
        let mut n = 0u64;
        let next = loop {
            let m = match reader.next().map_err(usage)? {
                Read::Done { next } => break next,
                Read::Record(m) => m,
            };
            if n % 4096 == 0 {
                progress.set_message(format!(
                    "{}/{}@{} of {}..{} (partition {} of {})",
                    range.topic,
                    range.partition,
                    m.offset(),
                    range.start,
                    range.end,
                    i + 1,
                    ranges.len()
                ));
            }
            n += 1;
            progress.inc(1);
            let seq = seq_of(range.partition, m.offset());
            let mut wait = std::time::Duration::from_millis(100);
            let started = std::time::Instant::now();
            let event = loop {
                match avro.decode(&plan, m.payload(), seq) {
                    Ok(e) => break Ok(e),
                    Err(crate::avro_in::DecodeError::Reject(r)) => break Err(r),
                    Err(crate::avro_in::DecodeError::Unavailable(why)) => {
                        if started.elapsed() >= std::time::Duration::from_secs(30) {
                            return Err(usage(format!("the schema registry at {registry} does not answer: {why}")));
                        }
                        tracing::warn!("{why}; retrying in {wait:?}");
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            };
            on(Item::Record(Input {
                stream: &plan.name,
                source: &range.topic,
                partition: range.partition,
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                event,
            }));
        };
        if next < range.end {
            tracing::warn!(
                topic = %range.topic, partition = range.partition, read_to = next, end = range.end,
                "the committed records end before the range does (an open transaction, or records still to come)"
            );
        }
        on(Item::Done { topic: &range.topic, partition: range.partition, next });
    }
    progress.finish();
    Ok(())
}

/// Why a record was not replayed: the input cannot be read on, or this record is bad.
pub(crate) enum Problem {
    Fatal(String),
    Rejected(String),
}
use Problem::{Fatal, Rejected};

pub(crate) type Records = Box<dyn Iterator<Item = (u64, Result<(String, i32, engine::Event), Problem>)>>;

const AVRO_MAGIC: &[u8; 4] = b"Obj\x01";

/// The records of an export: JSON lines, or an Avro object container file (detected by its
/// magic bytes). Each record's `seq` is its coordinate: a JSON line with `"partition"` and
/// `"offset"` (as `tripline export` writes) is that record of that partition; otherwise the
/// line or record number, from 1, in partition 0.
pub(crate) fn read_records(path: &Path, catalog: &dsl::Catalog, stream: Option<&str>) -> Result<Records, (u8, String)> {
    let open =
        || std::fs::File::open(path).map_err(|e| (EXIT_USAGE, format!("error: cannot read {}: {e}", path.display())));
    let mut magic = [0u8; 4];
    let is_avro = std::io::Read::read_exact(&mut open()?, &mut magic).is_ok() && &magic == AVRO_MAGIC;
    if !is_avro {
        let catalog = catalog.clone();
        let lines = std::io::BufReader::new(open()?).lines().enumerate();
        return Ok(Box::new(lines.filter_map(move |(i, line)| {
            let n = i as u64 + 1;
            match line {
                Err(e) => Some((n, Err(Fatal(format!("line {n}: {e}"))))),
                Ok(l) if l.trim().is_empty() => None,
                Ok(l) => Some((n, parse_line(&l, &catalog, n).map_err(Rejected))),
            }
        })));
    }
    let reader = apache_avro::Reader::new(std::io::BufReader::new(open()?))
        .map_err(|e| (EXIT_USAGE, format!("error: {}: not a readable Avro file: {e}", path.display())))?;
    // The record type of each union branch (or the one record type) of the writer schema.
    let branch_names: Vec<String> = match reader.writer_schema() {
        apache_avro::Schema::Record(r) => vec![r.name.fullname(None)],
        apache_avro::Schema::Union(u) => u
            .variants()
            .iter()
            .map(|v| match v {
                apache_avro::Schema::Record(r) => r.name.fullname(None),
                _ => String::new(),
            })
            .collect(),
        other => {
            return Err((
                EXIT_USAGE,
                format!("error: {}: the Avro schema is {other:?}, not a record or a union of records", path.display()),
            ))
        }
    };
    let candidates: Vec<&String> = catalog
        .streams
        .iter()
        .filter(|(name, s)| {
            stream.is_none_or(|want| want == name.as_str())
                && branch_names.iter().filter(|b| !b.is_empty()).all(|b| s.record_type(b).is_some())
        })
        .map(|(name, _)| name)
        .collect();
    let stream_name = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            return Err((
                EXIT_USAGE,
                format!(
                    "error: {}: no configured stream has the record type(s) {}{}",
                    path.display(),
                    branch_names.join(", "),
                    stream.map(|s| format!(" (asked for stream `{s}`)")).unwrap_or_default()
                ),
            ))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            return Err((
                EXIT_USAGE,
                format!(
                    "error: {}: several streams fit ({}): say which with --stream",
                    path.display(),
                    names.join(", ")
                ),
            ));
        }
    };
    let schema = catalog.streams[&stream_name].clone();
    Ok(Box::new(reader.enumerate().map(move |(i, record)| {
        let n = i as u64 + 1;
        let value = match record {
            Ok(v) => v,
            Err(e) => return (n, Err(Fatal(format!("record {n}: {e}")))),
        };
        let type_name = match &value {
            apache_avro::types::Value::Union(idx, _) => branch_names.get(*idx as usize).cloned(),
            _ => branch_names.first().cloned(),
        };
        let result = serde_json::Value::try_from(value)
            .map_err(|e| Rejected(format!("record {n}: {e}")))
            .and_then(|json| decode::json_event(&schema, type_name.as_deref(), &json, n).map_err(Rejected))
            .map(|event| (stream_name.clone(), 0, event));
        (n, result)
    })))
}

fn parse_line(line: &str, catalog: &dsl::Catalog, n: u64) -> Result<(String, i32, engine::Event), String> {
    let j: Json = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let stream = j["stream"].as_str().ok_or("no \"stream\"")?;
    let schema = catalog.streams.get(stream).ok_or_else(|| format!("unknown stream `{stream}`"))?;
    let (partition, seq) = match (j.get("partition"), j.get("offset")) {
        (None, None) => (0, n),
        (Some(p), Some(o)) => {
            let p = p.as_i64().filter(|p| (0..=0xffff).contains(p)).ok_or("\"partition\" is not a partition number")?;
            let o = o.as_i64().filter(|o| (0..1 << 48).contains(o)).ok_or("\"offset\" is not an offset")?;
            (p as i32, seq_of(p as i32, o))
        }
        _ => return Err("give both \"partition\" and \"offset\", or neither".to_owned()),
    };
    let event = decode::json_event(schema, j["type"].as_str(), &j["value"], seq)?;
    Ok((stream.to_owned(), partition, event))
}

fn json_value(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(x) => serde_json::Number::from_f64(*x).map_or_else(|| "null".to_owned(), |n| n.to_string()),
        Value::Str(s) => serde_json::to_string(s.as_ref()).unwrap_or_default(),
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A stable alert id: the pattern's content hash, the key and the matched events' coordinates.
pub fn alert_id(nfa: &Nfa, key: &Key, matched: &[(String, Vec<u64>)]) -> String {
    let mut h = Sha256::new();
    h.update(nfa.meta.hash.as_bytes());
    h.update([0]);
    h.update(key.to_string().as_bytes());
    for (var, seqs) in matched {
        h.update([0]);
        h.update(var.as_bytes());
        for s in seqs {
            h.update(s.to_be_bytes());
        }
    }
    h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// One alert as a JSON line, fields in a fixed order. `match` lists, per variable, the offsets
/// of the events it took in `partition` (an export without coordinates: partition 0, line or
/// record numbers).
pub fn alert_line(nfa: &Nfa, key: &Key, ts: i64, events: &engine::runtime::MatchEvents) -> String {
    let body = engine::alert::body(nfa, events);
    let m = &nfa.meta;
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "{{\"alert_id\":{},\"pattern\":{},\"version\":{},\"hash\":{},\"severity\":{},\"mode\":{},\"key\":{},\"ts\":{ts},",
        json_str(&alert_id(nfa, key, &body.matched)),
        json_str(&m.name),
        m.version,
        json_str(&m.hash),
        json_str(m.severity.as_str()),
        json_str(if m.mode == engine::Mode::Shadow { "shadow" } else { "live" }),
        json_str(&key.to_string()),
    );
    write_match(&mut s, &body.matched);
    s.push_str(",\"fields\":{");
    for (i, (name, v)) in body.fields.iter().enumerate() {
        let _ = write!(s, "{}{}:{}", if i > 0 { "," } else { "" }, json_str(name), json_value(v));
    }
    let _ = write!(s, "}},\"message\":{}}}", json_str(&body.message));
    s
}

/// A timed-out partial match as a JSON line: the pattern, the key, when the window closed and
/// the events taken so far.
pub fn timeout_line(nfa: &Nfa, key: &Key, ts: i64, events: &engine::runtime::MatchEvents) -> String {
    let m = &nfa.meta;
    let mut matched = Vec::new();
    for (i, v) in nfa.vars.iter().enumerate() {
        if let Some((_, list)) = events.iter().find(|(var, _)| var.index() == i) {
            matched.push((v.name.clone(), list.iter().map(|e| e.seq).collect::<Vec<u64>>()));
        }
    }
    let mut s = String::with_capacity(160);
    let _ = write!(
        s,
        "{{\"pattern\":{},\"version\":{},\"hash\":{},\"key\":{},\"timed_out_at\":{ts},",
        json_str(&m.name),
        m.version,
        json_str(&m.hash),
        json_str(&key.to_string()),
    );
    write_match(&mut s, &matched);
    s.push('}');
    s
}

/// `"partition":P,"match":{"var":[offset,...],...}`.
fn write_match(s: &mut String, matched: &[(String, Vec<u64>)]) {
    let partition = matched.iter().flat_map(|(_, seqs)| seqs.first()).map(|&q| coords(q).0).next().unwrap_or(0);
    let _ = write!(s, "\"partition\":{partition},\"match\":{{");
    for (i, (var, seqs)) in matched.iter().enumerate() {
        let list: Vec<String> = seqs.iter().map(|&q| coords(q).1.to_string()).collect();
        let _ = write!(s, "{}{}:[{}]", if i > 0 { "," } else { "" }, json_str(var), list.join(","));
    }
    s.push('}');
}
