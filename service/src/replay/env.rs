//! What a replay (or an explanation) runs under: the configuration, and which pattern set:
//! files, the config's patterns, or a set the service recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::core::config::{self, Config};
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
    pub set: PatternSet,
    pub origin: String,
    pub starts: BTreeMap<(String, i32), Position>,
}

/// Compiles the chosen pattern set (diagnostics to stdout); a recorded set is read from the
/// pattern sets topic.
pub fn choose(env: &mut Env, choice: Choice<'_>) -> Result<Chosen> {
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
            pattern_sets::check_hash(hash)?;
            let topic = env.cfg.outputs.pattern_sets_topic.clone();
            let catalog = env.catalog.clone();
            let found = pattern_sets::recorded(env.activations()?, hash, &topic, &catalog)?;
            Ok(Chosen {
                origin: format!("pattern set {} as recorded in topic `{topic}`", found.set.hash()),
                set: found.set,
                starts: found.starts,
            })
        }
    }
}
