//! Tripline's pattern language: parse, check against stream schemas, compile to [`engine::Nfa`].
//!
//! ```text
//! source --parser--> ast::File --check--> CheckedPattern --compile--> engine::Nfa
//! ```
//! Every stage reports problems as [`Diagnostic`]s (file, line, column, message, hint) and goes
//! on, so one run reports every error of a file. pest types stay inside [`parser`].
//!
//! [`json_event`] decodes a record of a stream (the JSON-lines export format) into an
//! [`engine::Event`] against its [`StreamSchema`]: the reference decoder of the project (the
//! service's direct Avro decoder converts as its [`json_field`] does).

pub mod ast;
pub mod check;
pub mod compile;
pub mod diag;
pub mod event;
pub mod format;
pub mod parser;
pub mod schema;

pub use diag::{Diagnostic, SourceFile};
pub use engine::TableKind;
pub use event::{json_event, json_field, EventError, EventErrorKind};
pub use schema::{Catalog, FieldType, SchemaError, StreamSchema, TableDecl};

/// Deepest nesting of brackets and prefix operators accepted, so that hostile input cannot
/// exhaust the stack.
pub const MAX_NESTING: usize = 128;
/// Most operators accepted in one expression (a chain of them nests as deeply as brackets).
pub const MAX_OPERATORS: usize = 1024;

/// A compiled pattern and where it is defined.
#[derive(Debug)]
pub struct CompiledPattern {
    pub nfa: engine::Nfa,
    /// The pattern's name in its source file.
    pub name_span: ast::Span,
}

/// The result of checking one file.
#[derive(Debug, Default)]
pub struct Compiled {
    /// One compiled pattern per valid pattern, in file order.
    pub patterns: Vec<CompiledPattern>,
    /// Every error found, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Compiled {
    pub fn is_ok(&self) -> bool {
        self.diagnostics.is_empty()
    }
}

/// Parses, checks and compiles every pattern of `src` against `catalog`.
pub fn compile_source(src: &SourceFile, catalog: &Catalog) -> Compiled {
    if let Some(d) = nesting_error(src) {
        return Compiled { patterns: Vec::new(), diagnostics: vec![d] };
    }
    let parsed = parser::parse(src);
    let mut diagnostics = parsed.errors.clone();
    if parsed.file.patterns.is_empty() && diagnostics.is_empty() {
        let d = src
            .diag(ast::Span::new(0, 0), "empty-file", "this file defines no pattern")
            .with_hint("a pattern starts with `pattern NAME`; see docs/language.md");
        diagnostics.push(d);
    }
    let checked = check::check_file(src, &parsed, catalog, &mut diagnostics);
    diagnostics.sort_by_key(|d| (d.line, d.column));
    diagnostics.dedup();
    let mut patterns = Vec::new();
    if diagnostics.is_empty() {
        for c in &checked {
            match compile::compile(c) {
                Ok(nfa) => patterns.push(CompiledPattern { nfa, name_span: c.name_span }),
                Err(e) => diagnostics.push(
                    src.diag(c.name_span, "unsupported-pattern", format!("pattern `{}` cannot run: {e}", c.name))
                        .with_hint("please report this pattern: the checker should have refused it with a reason"),
                ),
            }
        }
        if !diagnostics.is_empty() {
            patterns.clear();
        }
    }
    Compiled { patterns, diagnostics }
}

/// Rejects input nested deeper than [`MAX_NESTING`] (brackets, or runs of `not` / `-`).
fn nesting_error(src: &SourceFile) -> Option<Diagnostic> {
    let bytes = src.text.as_bytes();
    let (mut depth, mut run, mut ops) = (0usize, 0usize, 0usize);
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 1;
            } else if b == q || b == b'\n' {
                quote = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' | b'\'' => quote = Some(b),
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b':' | b',' => ops = 0,
            b'+' | b'*' | b'/' | b'%' | b'<' | b'>' | b'=' | b'!' => ops += 1,
            b'a' | b'o' if bytes[i..].starts_with(b"and ") || bytes[i..].starts_with(b"or ") => {
                ops += 1;
                run = 0;
            }
            b'(' | b'{' | b'[' => depth += 1,
            b')' | b'}' | b']' => depth = depth.saturating_sub(1),
            b'-' => {
                run += 1;
                ops += 1;
            }
            b'n' if bytes[i..].starts_with(b"not")
                && bytes.get(i + 3).is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'_') =>
            {
                run += 1;
                i += 3;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => run = 0,
        }
        if depth > MAX_NESTING || run > MAX_NESTING {
            let d = src
                .diag(ast::Span::new(i, i + 1), "too-deep", format!("nested more than {MAX_NESTING} levels deep"))
                .with_hint("split the expression into simpler conditions");
            return Some(d);
        }
        if ops > MAX_OPERATORS {
            let d = src
                .diag(
                    ast::Span::new(i, i + 1),
                    "too-deep",
                    format!("more than {MAX_OPERATORS} operators in one expression"),
                )
                .with_hint("split the expression into simpler conditions");
            return Some(d);
        }
        i += 1;
    }
    None
}
