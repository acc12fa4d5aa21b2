//! `tripline check` and `tripline explain --nfa`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use dsl::{Catalog, Diagnostic};
use serde::Serialize;

use crate::config::{self, Config};
use crate::{err, out, source, Format, EXIT_INVALID, EXIT_OK, EXIT_USAGE};

fn load_catalog(explicit: Option<&Path>) -> Result<Catalog, String> {
    let path = config::locate(explicit).map_err(|e| format!("{e:#}"))?;
    let cfg = Config::load(&path).map_err(|e| format!("{e:#}"))?;
    cfg.catalog(&path).map_err(|e| format!("{e:#}"))
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

/// Checks every file; returns the exit status.
pub fn run_check(paths: &[PathBuf], config: Option<&Path>, format: Format) -> u8 {
    let catalog = match load_catalog(config) {
        Ok(c) => c,
        Err(e) => {
            err(&format!("error: {e}\n"));
            return EXIT_USAGE;
        }
    };
    let files = match source::expand(paths) {
        Ok(f) => f,
        Err(e) => {
            err(&format!("error: {e}\n"));
            return EXIT_USAGE;
        }
    };
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
            match serde_json::to_string_pretty(&report) {
                Ok(s) => out(&(s + "\n")),
                Err(e) => {
                    err(&format!("error: cannot write JSON: {e}\n"));
                    return EXIT_USAGE;
                }
            }
        }
    }
    if ok {
        EXIT_OK
    } else {
        EXIT_INVALID
    }
}

/// Prints the compiled automaton of each pattern in `file`.
pub fn run_explain(file: &Path, only: Option<&str>, config: Option<&Path>) -> u8 {
    let catalog = match load_catalog(config) {
        Ok(c) => c,
        Err(e) => {
            err(&format!("error: {e}\n"));
            return EXIT_USAGE;
        }
    };
    let src = match source::read(file) {
        Ok(s) => s,
        Err(d) => {
            out(&d.render());
            return EXIT_INVALID;
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
        return EXIT_INVALID;
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
        err(&format!(
            "error: {} has no pattern `{}` (it has: {})\n",
            file.display(),
            only.unwrap_or(""),
            names.join(", ")
        ));
        return EXIT_USAGE;
    }
    out(&text);
    EXIT_OK
}
