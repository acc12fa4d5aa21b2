//! Tripline's pattern language: parse, check against stream schemas, compile to [`engine::Nfa`].

pub mod ast;
pub mod diag;
pub mod parser;

pub use diag::{Diagnostic, SourceFile};
