//! Reading pattern files safely: any bytes in, a [`SourceFile`] or a located diagnostic out.

use std::path::{Path, PathBuf};

use dsl::ast::Span;
use dsl::{Diagnostic, SourceFile};

use crate::error::Error;

/// Pattern files larger than this are refused.
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Reads a pattern file. Unreadable, oversized, non-UTF-8 or binary files give a diagnostic
/// that names the file and, where it applies, the line and column of the offending byte.
pub fn read(path: &Path) -> Result<SourceFile, Diagnostic> {
    let name = path.display().to_string();
    let whole = |msg: String, hint: &str| {
        SourceFile::new(name.clone(), "").diag(Span::new(0, 0), "unreadable", msg).with_hint(hint)
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| whole(format!("cannot read the file: {e}"), "check the path and permissions"))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(whole(
            format!(
                "the file is {} bytes; pattern files are limited to {} MiB",
                meta.len(),
                MAX_FILE_BYTES / 1024 / 1024
            ),
            "split it into several files",
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| whole(format!("cannot read the file: {e}"), "check the path and permissions"))?;
    from_bytes(name, bytes)
}

/// Decodes file contents, locating the first invalid UTF-8 sequence or NUL byte.
pub fn from_bytes(name: String, bytes: Vec<u8>) -> Result<SourceFile, Diagnostic> {
    if let Some(i) = bytes.iter().position(|b| *b == 0) {
        // Locate it in the text before it (lossily decoded: the file is not text anyway).
        let text = String::from_utf8_lossy(&bytes[..i]).into_owned();
        let at = text.len();
        let f = SourceFile::new(name, text + " ");
        return Err(f
            .diag(Span::new(at, at + 1), "binary-file", "this file contains a NUL byte: it is not a text file")
            .with_hint("pattern files are UTF-8 text (*.tl)"));
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(name, text)),

        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let bytes = e.into_bytes();
            let prefix = String::from_utf8_lossy(&bytes[..at]).into_owned();
            // Keep the rest of the offending line for context, made printable.
            let rest: String = String::from_utf8_lossy(&bytes[at..]).chars().take_while(|c| *c != '\n').collect();
            let f = SourceFile::new(name, format!("{prefix}{rest}"));
            Err(f
                .diag(Span::new(at, at + 1), "not-utf8", format!("invalid UTF-8: byte 0x{:02x} is not text", bytes[at]))
                .with_hint("save the file as UTF-8"))
        }
    }
}

/// Expands the command-line paths: files as given, directories walked (sorted) for `*.tl`.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out).map_err(|e| Error::usage(format!("cannot read directory {}: {e}", p.display())))?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Error::usage(format!("no such file or directory: {}", p.display())));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    entries.sort();
    for e in entries {
        if e.is_dir() {
            walk(&e, out)?;
        } else if e.extension().is_some_and(|x| x == "tl") {
            out.push(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_located() {
        let d = from_bytes("x.tl".into(), b"pattern a\n  from \xff\xfe\n".to_vec()).expect_err("invalid");
        assert_eq!((d.line, d.column, d.code), (2, 8, "not-utf8"));
        let d = from_bytes("x.tl".into(), b"pat\0tern".to_vec()).expect_err("binary");
        assert_eq!((d.line, d.column, d.code), (1, 4, "binary-file"));
    }
}
