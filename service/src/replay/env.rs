//! What a replay (or an explanation) runs under: the configuration, and which pattern set:
//! files, the config's patterns, a set the service recorded, or every recorded set switched
//! where the service switched it ([`Timeline`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::config::{self, Config};
use crate::core::context::{Context, Record};
use crate::core::pattern_sets::{self, compile_files, Activation, CompileError, PatternSet, Position};
use crate::error::{Error, Result};
use crate::io::reader::{self, Reader};
use crate::obs::out;

/// Which patterns a replay runs.
#[derive(Clone, Copy, Debug)]
pub enum Choice<'a> {
    /// Pattern files and directories.
    Files(&'a [PathBuf]),
    /// A set the service recorded (hash or unique prefix), from the pattern sets topic.
    Recorded(&'a str),
    /// The config's `service.patterns`.
    Configured,
    /// Every set the service recorded, each switched in on each partition where the service
    /// switched it (the pattern sets topic).
    AsRecorded,
}

/// Compiles the pattern files; diagnostics go to stdout.
fn compile_patterns(paths: &[PathBuf], catalog: &dsl::Catalog) -> Result<PatternSet> {
    compile_files(paths, catalog, &mut |d| out(&format!("{d}\n"))).map_err(|e| match e {
        CompileError::Diagnostics(_) => Error::invalid(format!("{e}; nothing was replayed")),
        e => e.into(),
    })
}

/// The configuration a replay runs under.
pub struct Env {
    pub cfg: Config,
    pub path: PathBuf,
    pub catalog: dsl::Catalog,
    /// The Kafka reader, made when first needed.
    reader: Option<Reader>,
    /// The pattern sets the service recorded, read when first needed.
    activations: Option<Vec<Activation>>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("path", &self.path).field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Env {
    /// Loads the configuration (the `--config` path, `$TRIPLINE_CONFIG` or ./tripline.toml).
    pub fn load(config: Option<&Path>) -> Result<Env> {
        let path = config::locate(config)?;
        let cfg = Config::load_with_env(&path)?;
        let catalog = cfg.catalog(&path)?;
        Ok(Env { cfg, path, catalog, reader: None, activations: None })
    }

    /// The activation records of the pattern sets topic (read once).
    pub fn activations(&mut self) -> Result<&[Activation]> {
        if self.activations.is_none() {
            let topic = self.cfg.outputs.pattern_sets_topic.clone();
            let (r, cfg) = self.reader_with_config()?;
            let mut activations = Vec::new();
            for (p, o, bytes) in reader::read_all(r, cfg, &topic)? {
                match serde_json::from_slice::<Activation>(&bytes) {
                    Ok(a) => activations.push(a),
                    Err(e) => tracing::warn!("{topic}/{p}@{o} is not an activation record: {e}"),
                }
            }
            self.activations = Some(activations);
        }
        Ok(self.activations.as_deref().unwrap_or_default())
    }

    /// What the service recorded besides the records (see `core::context`): nothing when no
    /// stream advances when idle and no table is configured, or the service never made the
    /// context topic.
    pub fn context(&mut self) -> Result<Context> {
        let mut out = Context::default();
        let Some(topic) = self.cfg.context_topic() else { return Ok(out) };
        let (r, cfg) = self.reader_with_config()?;
        if !reader::exists(r, cfg, &topic)? {
            return Ok(out);
        }
        for (p, o, bytes) in reader::read_all(r, cfg, &topic)? {
            match Record::from_json(&bytes) {
                Ok(rec) => out.push(rec),
                Err(e) => tracing::warn!("{topic}/{p}@{o} is not a context record: {e}"),
            }
        }
        Ok(out)
    }

    /// The Kafka reader (made once) and the configuration.
    pub fn reader_with_config(&mut self) -> Result<(&Reader, &Config)> {
        self.reader()?;
        match &self.reader {
            Some(r) => Ok((r, &self.cfg)),
            None => Err(Error::failed("the Kafka reader was not made")),
        }
    }

    /// The Kafka reader (made once).
    pub fn reader(&mut self) -> Result<&Reader> {
        if self.reader.is_none() {
            self.reader = Some(reader::reader(&self.cfg)?);
        }
        self.reader.as_ref().ok_or_else(|| Error::failed("the Kafka reader was not made"))
    }
}

/// A pattern set to run, where it came from, and (for a recorded set) where it took effect.
#[derive(Debug)]
pub struct Chosen {
    /// With a timeline: every version of its sets (for the report).
    pub set: PatternSet,
    pub origin: String,
    pub starts: BTreeMap<(String, i32), Position>,
    /// The sets as the service switched them, per partition ([`Choice::AsRecorded`]).
    pub timeline: Option<Timeline>,
}

/// The pattern sets a service ran on each input partition and where each took effect, from
/// its activation records.
#[derive(Debug, Default)]
pub struct Timeline {
    /// The sets by hash, compiled from their recorded sources.
    pub sets: BTreeMap<String, PatternSet>,
    /// Per (topic, partition), the activations in order of offset (activations at the same
    /// offset in the order they were recorded): each set takes effect before the record at
    /// its offset, as the service switched (`Partition::with_plan`).
    pub steps: BTreeMap<(String, i32), Vec<Step>>,
}

/// One activation of a set on one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub set: String,
    pub offset: i64,
    /// The partition's watermark then, as the service had it.
    pub watermark: Option<i64>,
    /// `assign`, `reload`, ...
    pub reason: String,
}

impl Timeline {
    /// The timeline of the activation records `records` (in the topic's order) of topic
    /// `topic`, each set compiled against `catalog` and checked to be what ran.
    pub fn of(records: &[Activation], topic: &str, catalog: &dsl::Catalog) -> Result<Timeline> {
        if records.is_empty() {
            return Err(Error::usage(format!(
                "topic `{topic}` has no activation records: no pattern set is recorded (has the service run?)"
            )));
        }
        let mut t = Timeline::default();
        for a in records {
            if !t.sets.contains_key(&a.set) {
                let found = pattern_sets::recorded(records, &a.set, topic, catalog)?;
                t.sets.insert(a.set.clone(), found.set);
            }
            for pos in &a.positions {
                t.steps.entry((pos.topic.clone(), pos.partition)).or_default().push(Step {
                    set: a.set.clone(),
                    offset: pos.offset,
                    watermark: pos.watermark,
                    reason: a.reason.clone(),
                });
            }
        }
        for steps in t.steps.values_mut() {
            // Stable: the same offset keeps the recorded order.
            steps.sort_by_key(|s| s.offset);
        }
        Ok(t)
    }

    /// Every pattern version of the sets, sorted by name and version (for the report).
    pub fn versions(&self) -> PatternSet {
        let mut nfas: Vec<Arc<engine::Nfa>> = Vec::new();
        for set in self.sets.values() {
            for n in &set.nfas {
                if !nfas.iter().any(|m| m.meta.hash == n.meta.hash) {
                    nfas.push(n.clone());
                }
            }
        }
        nfas.sort_by(|a, b| (&a.meta.name, a.meta.version).cmp(&(&b.meta.name, b.meta.version)));
        PatternSet { file_of: vec![0; nfas.len()], nfas, ..PatternSet::default() }
    }
}

/// Compiles the chosen pattern set (diagnostics to stdout); a recorded set is read from the
/// pattern sets topic.
pub fn choose(env: &mut Env, choice: Choice<'_>) -> Result<Chosen> {
    let base = env.path.parent().unwrap_or(Path::new(".")).to_owned();
    match choice {
        Choice::Files(paths) => {
            let set = compile_patterns(paths, &env.catalog)?;
            let origin = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
            Ok(Chosen { set, origin: format!("files {origin}"), starts: BTreeMap::new(), timeline: None })
        }
        Choice::Configured => {
            let paths: Vec<PathBuf> = env.cfg.service.patterns.iter().map(|p| base.join(p)).collect();
            let set = compile_patterns(&paths, &env.catalog)?;
            Ok(Chosen {
                set,
                origin: format!("the patterns of {}", env.path.display()),
                starts: BTreeMap::new(),
                timeline: None,
            })
        }
        Choice::Recorded(hash) => {
            pattern_sets::check_hash(hash)?;
            let topic = env.cfg.outputs.pattern_sets_topic.clone();
            let catalog = env.catalog.clone();
            let found = pattern_sets::recorded(env.activations()?, hash, &topic, &catalog)?;
            Ok(Chosen {
                origin: format!("pattern set {} as recorded in topic `{topic}`", found.set.hash()),
                set: found.set,
                starts: found.starts,
                timeline: None,
            })
        }
        Choice::AsRecorded => {
            let topic = env.cfg.outputs.pattern_sets_topic.clone();
            let catalog = env.catalog.clone();
            let timeline = Timeline::of(env.activations()?, &topic, &catalog)?;
            let starts = timeline
                .steps
                .iter()
                .filter_map(|(k, steps)| {
                    let first = steps.first()?;
                    let pos = Position {
                        topic: k.0.clone(),
                        partition: k.1,
                        offset: first.offset,
                        watermark: first.watermark,
                    };
                    Some((k.clone(), pos))
                })
                .collect();
            let switches = timeline.steps.values().map(|s| s.len()).sum::<usize>();
            Ok(Chosen {
                set: timeline.versions(),
                origin: format!(
                    "the sets recorded in topic `{topic}` ({}), switched where the service switched them ({switches} activations)",
                    timeline.sets.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                starts,
                timeline: Some(timeline),
            })
        }
    }
}
