//! `tripline fmt`: pattern files in the canonical layout ([`dsl::format`]). A file is rewritten
//! only when its patterns' content hashes are the same before and after (the meaning is
//! unchanged), and only when it compiles. `--check` rewrites nothing and exits 1 when a file is
//! not in the layout (for CI).

use super::{PatternFiles, Status};
use crate::core::pattern_sets::compile_sources;
use crate::core::source;
use crate::error::{Error, Kind, Result};
use crate::obs::{err, out};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    files: PatternFiles,
    /// Rewrite nothing: list the files not in the canonical layout and exit 1 if there is one.
    #[arg(long)]
    check: bool,
}

/// The content hash of each pattern of `text` (named `name`), or why it does not compile.
fn hashes(name: &str, text: &str, catalog: &dsl::Catalog) -> std::result::Result<Vec<(String, String)>, String> {
    let mut diagnostics = Vec::new();
    let set = compile_sources(vec![dsl::SourceFile::new(name.to_owned(), text.to_owned())], 0, catalog, &mut |d| {
        diagnostics.push(d)
    })
    .map_err(|e| format!("{e}:\n{}", diagnostics.join("\n")))?;
    Ok(set.nfas.iter().map(|n| (n.meta.name.clone(), n.meta.hash.clone())).collect())
}

pub fn run(args: Args) -> Result<Status> {
    let (cfg, path, paths) = args.files.resolve()?;
    let catalog = cfg.catalog(&path)?;
    let files = source::expand(&paths)?;
    if files.is_empty() {
        return Err(Error::usage("no pattern files (*.tl) in the paths given"));
    }
    let (mut changed, mut failed) = (Vec::new(), 0usize);
    for file in &files {
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                failed += 1;
                err(&format!("error: cannot read {name}: {e}\n"));
                continue;
            }
        };
        let formatted = dsl::format::format(&text);
        if formatted == text {
            continue;
        }
        if args.check {
            out(&format!("{name}: not in the canonical layout ({})\n", first_difference(&text, &formatted)));
            changed.push(file.clone());
            continue;
        }
        let before = match hashes(&name, &text, &catalog) {
            Ok(h) => h,
            Err(why) => {
                failed += 1;
                err(&format!("error: {name} is left as it is: it does not compile ({why})\n"));
                continue;
            }
        };
        if hashes(&name, &formatted, &catalog).as_ref() != Ok(&before) {
            failed += 1;
            err(&format!(
                "error: {name} is left as it is: its layout cannot change without changing its meaning (a line \
                 break inside a string?); please report it\n"
            ));
            continue;
        }
        std::fs::write(file, &formatted).map_err(|e| Error::usage(format!("cannot write {name}: {e}")))?;
        out(&format!("formatted {name}\n"));
        changed.push(file.clone());
    }
    let verb = if args.check { "would change" } else { "changed" };
    err(&format!("{} file(s): {} {verb}, {failed} left as they are (errors)\n", files.len(), changed.len()));
    if failed > 0 {
        return Ok(Status::Reported(Kind::Usage));
    }
    Ok(if args.check && !changed.is_empty() { Status::Invalid } else { Status::Ok })
}

/// Where two texts first differ: `line N`.
fn first_difference(a: &str, b: &str) -> String {
    let n =
        a.lines().zip(b.lines()).position(|(x, y)| x != y).unwrap_or_else(|| a.lines().count().min(b.lines().count()));
    format!("first at line {}", n + 1)
}
