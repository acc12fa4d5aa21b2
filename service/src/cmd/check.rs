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
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

fn load_catalog(explicit: Option<&Path>) -> Result<Catalog> {
    let path = config::locate(explicit)?;
    let cfg = Config::load(&path)?;
    cfg.catalog(&path)
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
}

/// Checks every file; the diagnostics go to stdout, a summary to stderr.
pub fn run(args: Args) -> Result<Status> {
    let Args { paths, config, format } = args;
    let catalog = load_catalog(config.as_deref())?;
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
            let nfa = compiled.nfa;
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
        }
    }
    let ok = diagnostics.is_empty();
    match format {
        Format::Text => {
            let mut text = String::new();
            for d in &diagnostics {
                text.push_str(&d.render());
                text.push('\n');
            }
            out(&text);
            let files_with_errors = {
                let mut f: Vec<&str> = diagnostics.iter().map(|d| d.file.as_str()).collect();
                f.dedup();
                f.len()
            };
            if ok {
                err(&format!("checked {} file(s), {} pattern(s): all valid\n", files.len(), patterns.len()));
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
            let report = Report { ok, files: files.len(), patterns, diagnostics };
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
