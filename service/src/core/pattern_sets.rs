//! Pattern sets: what the service compiled (patterns and the source files they came from), the
//! record it publishes every time a set becomes active on some partitions, and reading those
//! records back so `tripline replay --pattern-set HASH` runs exactly the patterns that ran.
//!
//! A record says: set `set` (its hash) with these patterns (name, version, content hash) from
//! these sources became active on these partitions, each at an offset (the first record it saw)
//! and a watermark. The service writes one when partitions are assigned to it (the set runs on
//! them from their committed offset on) and one when a reload activates a new set. Each is
//! committed in a transaction of its own before any record is read under the set.
//!
//! Compiling pattern files into a set ([`compile_files`]) is here too: the service, replays and
//! explanations all compile the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::Nfa;
use serde::{Deserialize, Serialize};

use super::plan::LiveKeys;
use super::source;
use crate::error::{Error, Kind};

/// A compiled pattern set and the sources it was compiled from.
#[derive(Clone, Debug, Default)]
pub struct PatternSet {
    /// Sorted by name.
    pub nfas: Vec<Arc<Nfa>>,
    /// The source files: (name as given, text).
    pub sources: Vec<(String, String)>,
    /// Per pattern (parallel to `nfas`), the index of its source in `sources`.
    pub file_of: Vec<usize>,
    /// The keys on which patterns' alerts are live, by content hash, for those not live on
    /// every key (a canary or shadow deployment).
    pub live_keys: BTreeMap<String, LiveKeys>,
}

impl PatternSet {
    /// The set's hash: 16 hex digits over its patterns' names and content hashes (and the
    /// live keys of those not live on every key).
    pub fn hash(&self) -> String {
        set_hash_with(&self.nfas, &self.live_keys)
    }

    /// The activation record of this set on `positions`.
    pub fn activation(&self, reason: &str, instance: &str, at_ms: i64, positions: Vec<Position>) -> Activation {
        Activation {
            deployment: None,
            group: String::new(),
            set: self.hash(),
            reason: reason.to_owned(),
            instance: instance.to_owned(),
            activated_at_ms: at_ms,
            patterns: self
                .nfas
                .iter()
                .zip(&self.file_of)
                .map(|(n, &file)| PatternEntry {
                    name: n.meta.name.clone(),
                    version: n.meta.version,
                    hash: n.meta.hash.clone(),
                    stream: n.meta.stream.clone(),
                    severity: n.meta.severity.as_str().to_owned(),
                    mode: mode(n).to_owned(),
                    file,
                    live_keys: self.live_keys.get(&n.meta.hash).copied(),
                })
                .collect(),
            files: self
                .sources
                .iter()
                .map(|(name, text)| FileEntry { name: name.clone(), text: text.clone() })
                .collect(),
            positions,
        }
    }
}

/// Why pattern files did not become a pattern set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// Diagnostics were reported (an unreadable file counts as one).
    #[error("the patterns have {0} error(s)")]
    Diagnostics(usize),
    /// The files hold no pattern.
    #[error("no patterns found")]
    Empty,
    /// The paths cannot be read as pattern files.
    #[error("{0}")]
    Paths(Error),
}

impl CompileError {
    pub fn kind(&self) -> Kind {
        match self {
            CompileError::Diagnostics(_) => Kind::Invalid,
            CompileError::Empty => Kind::Usage,
            CompileError::Paths(e) => e.kind(),
        }
    }
}

impl From<CompileError> for Error {
    fn from(e: CompileError) -> Self {
        Error::new(e.kind(), e)
    }
}

/// Compiles pattern files (and directories of them) against `catalog` into a set sorted by
/// name; each diagnostic goes to `report`, rendered.
pub fn compile_files(
    paths: &[std::path::PathBuf],
    catalog: &dsl::Catalog,
    report: &mut dyn FnMut(String),
) -> Result<PatternSet, CompileError> {
    let files = source::expand(paths).map_err(CompileError::Paths)?;
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
    compile_sources(sources, unreadable, catalog, report)
}

/// Compiles pattern sources against `catalog` into a set sorted by name; `unreadable` files
/// were already reported and count as errors.
pub fn compile_sources(
    sources: Vec<dsl::SourceFile>,
    unreadable: usize,
    catalog: &dsl::Catalog,
    report: &mut dyn FnMut(String),
) -> Result<PatternSet, CompileError> {
    let mut set = PatternSet::default();
    let mut bad = unreadable;
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
        return Err(CompileError::Diagnostics(bad));
    }
    if compiled.is_empty() {
        return Err(CompileError::Empty);
    }
    compiled.sort_by(|a, b| a.0.meta.name.cmp(&b.0.meta.name));
    // The same version twice (a deployment's sources with a running set's) is one pattern.
    let mut seen = std::collections::HashSet::new();
    compiled.retain(|(n, _)| seen.insert(n.meta.hash.clone()));
    (set.nfas, set.file_of) = compiled.into_iter().unzip();
    Ok(set)
}

/// `live` or `shadow`.
pub fn mode(nfa: &Nfa) -> &'static str {
    if nfa.meta.mode == engine::Mode::Shadow {
        "shadow"
    } else {
        "live"
    }
}

/// The hash of a pattern set: 16 hex digits of SHA-256 over its sorted "name hash" lines.
pub fn set_hash(nfas: &[Arc<Nfa>]) -> String {
    set_hash_with(nfas, &BTreeMap::new())
}

/// [`set_hash`], with a line "name hash live from to" for each pattern live on some keys only.
pub fn set_hash_with(nfas: &[Arc<Nfa>], live: &BTreeMap<String, LiveKeys>) -> String {
    use sha2::{Digest, Sha256};
    let mut lines: Vec<String> = nfas
        .iter()
        .map(|n| match live.get(&n.meta.hash) {
            Some(l) => format!("{} {} live {} {}\n", n.meta.name, n.meta.hash, l.from, l.to),
            None => format!("{} {}\n", n.meta.name, n.meta.hash),
        })
        .collect();
    lines.sort();
    let digest = Sha256::digest(lines.concat().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// One record of the pattern sets topic, as JSON: an activation of a pattern set on some
/// partitions by an instance, or a deployment (a request to every instance of a group to run the
/// set: no positions).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub set: String,
    /// An instance's activation: `assign` (partitions taken over), `reload` (SIGHUP) or
    /// `switch` (a deployment followed). A deployment: `deploy` or `rollback`.
    pub reason: String,
    pub instance: String,
    /// The service's clock when it activated the set (for people; replays never read it).
    pub activated_at_ms: i64,
    pub patterns: Vec<PatternEntry>,
    pub files: Vec<FileEntry>,
    /// Where the set took effect, per input partition.
    pub positions: Vec<Position>,
    /// The deployment: the one requested (a deployment record) or followed (a `switch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
    /// The consumer group of the instance (empty in records written before it was recorded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

impl Activation {
    /// Whether the record is a deployment (`tripline deploy`, `tripline rollback`), not an
    /// instance's activation.
    pub fn is_deployment(&self) -> bool {
        matches!(self.reason.as_str(), "deploy" | "rollback") && self.deployment.is_some()
    }

    /// The deployment it requests, if it is a deployment for consumer group `group`.
    pub fn deployment_for(&self, group: &str) -> Option<&Deployment> {
        self.deployment.as_ref().filter(|d| self.is_deployment() && d.group == group)
    }
}

/// A deployment of a pattern set to every instance of a consumer group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Unique per deployment.
    pub id: String,
    /// The consumer group (`kafka.group_id`) whose instances follow it.
    pub group: String,
    /// A canary: the new versions are live on this share of the keys (basis points), the
    /// versions they replace on the others (each shadow where the other is live). The set's
    /// patterns say which keys each is live on; this is for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_bp: Option<u16>,
    /// A shadow deployment: the new versions run in shadow beside the running ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// The latest deployment for `group` among `records` (in topic order).
pub fn latest_deployment<'a>(records: &'a [Activation], group: &str) -> Option<&'a Activation> {
    records.iter().rev().find(|a| a.deployment_for(group).is_some())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatternEntry {
    pub name: String,
    pub version: u32,
    pub hash: String,
    pub stream: String,
    pub severity: String,
    pub mode: String,
    /// Index into [`Activation::files`].
    pub file: usize,
    /// The keys on which its alerts are live, when not every key (a canary or shadow
    /// deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_keys: Option<LiveKeys>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub text: String,
}

/// An input partition's position when a set took effect on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    /// The first offset read under the set.
    pub offset: i64,
    /// The partition's watermark then; `None` before its first event.
    pub watermark: Option<i64>,
}

/// What a replay of a recorded set needs: the compiled set, and per (topic, partition) the
/// earliest position it was recorded at.
#[derive(Debug)]
pub struct Recorded {
    pub set: PatternSet,
    pub starts: BTreeMap<(String, i32), Position>,
}

/// A set hash as given (lowercased), or why it cannot be one.
pub fn check_hash(wanted: &str) -> Result<String, Error> {
    let wanted = wanted.trim().to_ascii_lowercase();
    if wanted.len() < 6 || wanted.len() > 16 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::usage(format!(
            "`{wanted}` is not a pattern set hash (16 hex digits, or a unique prefix of 6 or more)"
        )));
    }
    Ok(wanted)
}

/// Finds set `wanted` (its hash, or a unique prefix of at least 6 digits) among the activation
/// records `records` (in topic order), compiles its sources against `catalog` and checks that
/// every pattern compiles to the content hash that ran.
pub fn recorded(records: &[Activation], wanted: &str, topic: &str, catalog: &dsl::Catalog) -> Result<Recorded, Error> {
    let wanted = check_hash(wanted)?;
    let mut hashes: Vec<&str> = records.iter().map(|a| a.set.as_str()).filter(|h| h.starts_with(&wanted)).collect();
    hashes.sort_unstable();
    hashes.dedup();
    let hash = match hashes.as_slice() {
        [one] => one.to_string(),
        [] => {
            let mut known: Vec<String> = Vec::new();
            for a in records {
                let line = format!(
                    "{} ({})",
                    a.set,
                    a.patterns.iter().map(|p| format!("{}@{}", p.name, p.version)).collect::<Vec<_>>().join(", ")
                );
                if !known.contains(&line) {
                    known.push(line);
                }
            }
            return Err(Error::usage(if known.is_empty() {
                format!("no pattern set `{wanted}`: topic `{topic}` has no activation records (has the service run?)")
            } else {
                format!("no pattern set `{wanted}` in topic `{topic}`; recorded sets: {}", known.join("; "))
            }));
        }
        many => {
            return Err(Error::usage(format!("`{wanted}` is the prefix of several pattern sets: {}", many.join(", "))))
        }
    };
    let first = records.iter().find(|a| a.set == hash).ok_or_else(|| Error::usage("the set vanished"))?;
    let sources: Vec<dsl::SourceFile> =
        first.files.iter().map(|f| dsl::SourceFile::new(f.name.clone(), f.text.clone())).collect();
    let mut problems = Vec::new();
    let mut set = compile_sources(sources, 0, catalog, &mut |d| problems.push(d)).map_err(|e| {
        Error::usage(format!("pattern set {hash} as recorded no longer compiles: {e}\n{}", problems.join("\n")))
    })?;
    for p in &first.patterns {
        let same_name = || set.nfas.iter().find(|n| n.meta.name == p.name);
        match set.nfas.iter().find(|n| n.meta.hash == p.hash).or_else(same_name) {
            Some(n) if n.meta.hash == p.hash => {}
            Some(n) => {
                return Err(Error::usage(format!(
                    "pattern `{}` of set {hash} ran with content hash {}, but its recorded source compiles to {} \
                     now: the stream's schema or this build's compiler changed, so this is not what ran",
                    p.name, p.hash, n.meta.hash
                )))
            }
            None => {
                return Err(Error::usage(format!(
                    "pattern `{}` of set {hash} is missing from its recorded sources",
                    p.name
                )))
            }
        }
    }
    // Only the recorded versions (a canary's sources may hold more), with their live keys.
    let (nfas, file_of): (Vec<_>, Vec<_>) = std::mem::take(&mut set.nfas)
        .into_iter()
        .zip(std::mem::take(&mut set.file_of))
        .filter(|(n, _)| first.patterns.iter().any(|p| p.hash == n.meta.hash))
        .unzip();
    (set.nfas, set.file_of) = (nfas, file_of);
    set.live_keys = first.patterns.iter().filter_map(|p| Some((p.hash.clone(), p.live_keys?))).collect();
    if set.hash() != hash {
        return Err(Error::usage(format!("the recorded sources of set {hash} compile to set {}", set.hash())));
    }
    let mut starts: BTreeMap<(String, i32), Position> = BTreeMap::new();
    for a in records.iter().filter(|a| a.set == hash) {
        for pos in &a.positions {
            let k = (pos.topic.clone(), pos.partition);
            if starts.get(&k).is_none_or(|s| pos.offset < s.offset) {
                starts.insert(k, pos.clone());
            }
        }
    }
    Ok(Recorded { set, starts })
}

/// Pattern versions by content hash: those of every set the service ran or found recorded, so
/// that a partition restores the state of versions that are draining (or that its state names
/// but the running set replaced).
#[derive(Clone, Debug, Default)]
pub struct Library {
    nfas: std::collections::HashMap<String, Arc<Nfa>>,
}

impl Library {
    /// Adds the versions of `set`.
    pub fn add(&mut self, set: &PatternSet) {
        for n in &set.nfas {
            self.nfas.entry(n.meta.hash.clone()).or_insert_with(|| n.clone());
        }
    }

    /// The version with content hash `hash`, if known.
    pub fn get(&self, hash: &str) -> Option<Arc<Nfa>> {
        self.nfas.get(hash).cloned()
    }

    /// Adds every set recorded in `records` (the pattern sets topic `topic`) whose sources
    /// still compile to what ran, against `catalog`; returns those that do not, with why.
    pub fn add_recorded(
        &mut self,
        records: &[Activation],
        topic: &str,
        catalog: &dsl::Catalog,
    ) -> Vec<(String, Error)> {
        let mut seen = std::collections::HashSet::new();
        let mut failed = Vec::new();
        for a in records {
            if !seen.insert(a.set.as_str()) || a.patterns.iter().all(|p| self.nfas.contains_key(&p.hash)) {
                continue;
            }
            match recorded(records, &a.set, topic, catalog) {
                Ok(r) => self.add(&r.set),
                Err(e) => failed.push((a.set.clone(), e)),
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library(names: &[&str]) -> (PatternSet, dsl::Catalog) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cfg = crate::core::config::Config::load(&root.join("tripline.toml")).expect("config");
        let catalog = cfg.catalog(&root.join("tripline.toml")).expect("catalog");
        let paths: Vec<_> = names.iter().map(|n| root.join(format!("patterns/{n}.tl"))).collect();
        let set = compile_files(&paths, &catalog, &mut |d| panic!("{d}")).expect("compiles");
        (set, catalog)
    }

    #[test]
    fn a_recorded_set_compiles_back_to_the_same_hashes() {
        let (set, catalog) = library(&["structuring", "rapid_movement"]);
        let pos = |p, offset| Position { topic: "payments".into(), partition: p, offset, watermark: Some(offset * 10) };
        let a = set.activation("assign", "i1", 5, vec![pos(0, 40), pos(1, 7)]);
        let b = set.activation("assign", "i2", 9, vec![pos(0, 12)]);
        let json = serde_json::to_string(&a).expect("json");
        let back: Activation = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, a);
        let found = recorded(&[a, b], &set.hash()[..8], "sets", &catalog).expect("found");
        assert_eq!(found.set.hash(), set.hash());
        assert_eq!(found.set.nfas.len(), 2);
        // The earliest position per partition.
        assert_eq!(found.starts[&("payments".to_owned(), 0)].offset, 12);
        assert_eq!(found.starts[&("payments".to_owned(), 1)].offset, 7);
    }

    #[test]
    fn unknown_ambiguous_and_altered_sets_are_refused_with_the_reason() {
        let (set, catalog) = library(&["structuring"]);
        let a = set.activation("reload", "i1", 5, Vec::new());
        let err =
            recorded(std::slice::from_ref(&a), "0123456789abcdef", "sets", &catalog).expect_err("unknown").to_string();
        assert!(err.contains("recorded sets: ") && err.contains("structuring@1"), "{err}");
        assert!(recorded(&[], "abcdef", "sets", &catalog)
            .expect_err("none")
            .to_string()
            .contains("no activation records"));
        assert!(recorded(&[], "xyz", "sets", &catalog)
            .expect_err("bad")
            .to_string()
            .contains("not a pattern set hash"));
        // A source edited after the fact (another threshold) no longer compiles to what ran.
        let mut forged = a.clone();
        forged.files[0].text = forged.files[0].text.replace("amount >= 8000", "amount >= 7000");
        let err = recorded(&[forged], &a.set, "sets", &catalog).expect_err("altered").to_string();
        assert!(err.contains("compiles to") && err.contains("structuring"), "{err}");
    }
}
