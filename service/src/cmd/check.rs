//! `tripline check` (pattern files against the configured stream schemas) and
//! `tripline explain --nfa` (the compiled automaton).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use dsl::{Catalog, Diagnostic};
use serde::Serialize;

use super::{Format, Status};
use crate::core::config::{self, Config};
use crate::core::source;
use crate::error::{Error, Kind, Result, ResultExt};
use crate::obs::{err, out};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files or directories to check.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Configuration file with the streams (default: $TRIPLINE_CONFIG, then ./tripline.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Also check the patterns against the latest schema version of each stream's subject
    /// (`<topic>-value`) in this schema registry: a field a pattern reads that the latest writer
    /// schema lacks or types otherwise is an error.
    #[arg(long, value_name = "URL")]
    registry: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

fn load_catalog(explicit: Option<&Path>) -> Result<Catalog> {
    let path = config::locate(explicit)?;
    let cfg = Config::load(&path)?;
    cfg.catalog(&path)
}

/// A finding of `--registry`: a pattern that records written with a subject's latest schema
/// break.
#[derive(Serialize)]
struct RegistryFinding {
    stream: String,
    subject: String,
    schema_id: u32,
    version: Option<u32>,
    pattern: String,
    field: String,
    problem: String,
}

/// The findings of the patterns `nfas` against the latest schema of each stream's subject in
/// the registry at `url`; subjects with no schema registered yet are listed in the second value.
fn against_registry(
    config: Option<&Path>,
    url: &str,
    catalog: &Catalog,
    nfas: &[std::sync::Arc<engine::Nfa>],
) -> Result<(Vec<RegistryFinding>, Vec<String>)> {
    use schema_registry_converter::blocking::schema_registry::get_schema_by_subject;
    use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
    let path = config::locate(config)?;
    let mut cfg = Config::load(&path)?;
    cfg.registry.url = Some(url.to_owned());
    let settings = crate::io::kafka::registry(&cfg)?;
    let (mut findings, mut missing) = (Vec::new(), Vec::new());
    for (name, stream) in &cfg.streams {
        let (Some(schema), true) = (catalog.streams.get(name), nfas.iter().any(|n| &n.meta.stream == name)) else {
            continue;
        };
        let subject = format!("{}-value", stream.topic);
        let strategy = SubjectNameStrategy::TopicNameStrategy(stream.topic.clone(), false);
        let latest = match get_schema_by_subject(&settings, &strategy) {
            Ok(r) => r,
            Err(e) if e.retriable => {
                return Err(Error::usage(format!("cannot reach the schema registry at {url}: {}", e.error)))
            }
            Err(_) => {
                missing.push(subject);
                continue;
            }
        };
        let writer = dsl::StreamSchema::from_avro_json(name, &latest.schema, None).map_err(|e| {
            Error::invalid(format!(
                "the latest schema of subject `{subject}` (id {}) is no stream schema: {e}",
                latest.id
            ))
        })?;
        let plan = crate::core::plan::StreamPlan::new(name, stream, schema.clone(), nfas);
        for b in crate::core::schema_gate::breaks(&plan, &writer) {
            findings.push(RegistryFinding {
                stream: name.clone(),
                subject: subject.clone(),
                schema_id: latest.id,
                version: latest.version,
                pattern: b.pattern,
                field: b.field,
                problem: b.why,
            });
        }
    }
    Ok((findings, missing))
}

#[derive(Serialize)]
struct PatternInfo {
    file: String,
    name: String,
    version: u32,
    hash: String,
    stream: String,
}

#[derive(Serialize)]
struct Report {
    ok: bool,
    files: usize,
    patterns: Vec<PatternInfo>,
    diagnostics: Vec<Diagnostic>,
    /// With `--registry`: patterns the latest writer schemas break.
    #[serde(skip_serializing_if = "Option::is_none")]
    registry: Option<Vec<RegistryFinding>>,
}

/// Checks every file; the diagnostics go to stdout, a summary to stderr.
pub fn run(args: Args) -> Result<Status> {
    let Args { paths, config, registry, format } = args;
    let catalog = load_catalog(config.as_deref())?;
    let mut nfas = Vec::new();
    let files = source::expand(&paths)?;
    let mut diagnostics = Vec::new();
    let mut patterns = Vec::new();
    // Pattern names are global to a pattern set: the same name in two files is an error.
    let mut defined: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for path in &files {
        let src = match source::read(path) {
            Ok(s) => s,
            Err(d) => {
                diagnostics.push(d);
                continue;
            }
        };
        let compiled = dsl::compile_source(&src, &catalog);
        diagnostics.extend(compiled.diagnostics);
        for compiled in compiled.patterns {
            let nfa = std::sync::Arc::new(compiled.nfa);
            let name = nfa.meta.name.clone();
            let (line, _) = src.line_col(compiled.name_span.start);
            if let Some((other, other_line)) = defined.get(&name) {
                let d = src
                    .diag(
                        compiled.name_span,
                        "duplicate-pattern",
                        format!("pattern `{name}` is also defined in {other}:{other_line}"),
                    )
                    .with_hint("pattern names must be unique across the pattern set");
                diagnostics.push(d);
                continue;
            }
            defined.insert(name.clone(), (src.name.clone(), line));
            patterns.push(PatternInfo {
                file: src.name.clone(),
                name,
                version: nfa.meta.version,
                hash: nfa.meta.hash.clone(),
                stream: nfa.meta.stream.clone(),
            });
            nfas.push(nfa);
        }
    }
    // The registry is asked only about patterns that compile.
    let (findings, missing) = match &registry {
        Some(url) if diagnostics.is_empty() => {
            let (f, m) = against_registry(config.as_deref(), url, &catalog, &nfas)?;
            (Some(f), m)
        }
        _ => (None, Vec::new()),
    };
    let ok = diagnostics.is_empty() && findings.as_ref().is_none_or(Vec::is_empty);
    match format {
        Format::Text => {
            let mut text = String::new();
            for d in &diagnostics {
                text.push_str(&d.render());
                text.push('\n');
            }
            for f in findings.iter().flatten() {
                let _ = writeln!(
                    text,
                    "error[schema-breaks-pattern]: {}@{} reads `{}`: {}\n  = the latest schema of subject `{}` (version {}, id {}) on stream `{}`",
                    f.pattern.split('@').next().unwrap_or(""),
                    f.pattern.split('@').nth(1).unwrap_or(""),
                    f.field,
                    f.problem,
                    f.subject,
                    f.version.map_or("?".into(), |v| v.to_string()),
                    f.schema_id,
                    f.stream
                );
            }
            out(&text);
            for m in &missing {
                err(&format!("note: subject `{m}` has no schema in the registry yet\n"));
            }
            let files_with_errors = {
                let mut f: Vec<&str> = diagnostics.iter().map(|d| d.file.as_str()).collect();
                f.dedup();
                f.len()
            };
            if ok {
                let against = if registry.is_some() { " (and against the registry's latest schemas)" } else { "" };
                err(&format!("checked {} file(s), {} pattern(s){against}: all valid\n", files.len(), patterns.len()));
            } else if diagnostics.is_empty() {
                err(&format!(
                    "checked {} file(s), {} pattern(s): valid, but the latest registered schemas break {} pattern field(s)\n",
                    files.len(),
                    patterns.len(),
                    findings.as_ref().map_or(0, Vec::len)
                ));
            } else {
                err(&format!(
                    "checked {} file(s): {} error(s) in {} file(s)\n",
                    files.len(),
                    diagnostics.len(),
                    files_with_errors
                ));
            }
        }
        Format::Json => {
            let report = Report { ok, files: files.len(), patterns, diagnostics, registry: findings };
            let s = serde_json::to_string_pretty(&report).or_fail(Kind::Failed, "cannot write JSON")?;
            out(&(s + "\n"));
        }
    }
    Ok(if ok { Status::Ok } else { Status::Invalid })
}

/// Prints the compiled automaton of each pattern in `file`.
pub fn explain_nfa(file: &Path, only: Option<&str>, config: Option<&Path>) -> Result<Status> {
    let catalog = load_catalog(config)?;
    let src = match source::read(file) {
        Ok(s) => s,
        Err(d) => {
            out(&d.render());
            return Ok(Status::Invalid);
        }
    };
    let compiled = dsl::compile_source(&src, &catalog);
    if !compiled.is_ok() {
        let mut text = String::new();
        for d in &compiled.diagnostics {
            text.push_str(&d.render());
            text.push('\n');
        }
        out(&text);
        return Ok(Status::Invalid);
    }
    let mut text = String::new();
    let mut shown = 0;
    for nfa in compiled.patterns.iter().map(|p| &p.nfa) {
        if only.is_some_and(|n| n != nfa.meta.name) {
            continue;
        }
        if shown > 0 {
            text.push('\n');
        }
        let _ = writeln!(text, "# hash {}", nfa.meta.hash);
        text.push_str(&engine::dump::dump(nfa));
        shown += 1;
    }
    if shown == 0 {
        let names: Vec<&str> = compiled.patterns.iter().map(|p| p.nfa.meta.name.as_str()).collect();
        return Err(Error::usage(format!(
            "{} has no pattern `{}` (it has: {})",
            file.display(),
            only.unwrap_or(""),
            names.join(", ")
        )));
    }
    out(&text);
    Ok(Status::Ok)
}
