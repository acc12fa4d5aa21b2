//! Diagnostics for analysts: file, line and column, the source line with a caret under the span,
//! what was expected in words, and a hint (usually the nearest known name).

use std::fmt::Write;

use serde::Serialize;

use crate::ast::Span;

/// A source file: its display name and text, with line starts for position lookups.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile { name: name.into(), text, line_starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = self.floor_char(offset.min(self.text.len()));
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        (line + 1, self.text[start..offset].chars().count() + 1)
    }

    /// The text of a 1-based line, without its newline.
    pub fn line_text(&self, line: usize) -> &str {
        let start = self.line_starts[line - 1];
        let end = self.line_starts.get(line).map_or(self.text.len(), |&e| e - 1);
        self.text[start..end].trim_end_matches('\r')
    }

    fn floor_char(&self, mut i: usize) -> usize {
        while !self.text.is_char_boundary(i) {
            i -= 1;
        }
        i
    }

    /// A diagnostic at `span`.
    pub fn diag(&self, span: Span, code: &'static str, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.line_col(span.start);
        let (end_line, end_column) = self.line_col(span.end.max(span.start));
        Diagnostic {
            file: self.name.clone(),
            line,
            column,
            end_line,
            end_column,
            code,
            message: message.into(),
            hint: None,
            source_line: self.line_text(line).to_owned(),
        }
    }
}

/// One error in a pattern file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    /// A stable, machine-readable kind (`syntax`, `unknown-field`, `type-mismatch`, ...).
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(skip)]
    pub source_line: String,
}

impl Diagnostic {
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// The human rendering: `file:line:col: error[code]: message`, the line, a caret, a hint.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}:{}:{}: error[{}]: {}", self.file, self.line, self.column, self.code, self.message);
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        // Tabs become spaces so the caret lines up; control characters are never echoed to a terminal.
        let line: String = self
            .source_line
            .chars()
            .map(|c| match c {
                '\t' => ' ',
                c if c.is_control() => '\u{FFFD}',
                c => c,
            })
            .collect();

        let _ = writeln!(out, "{pad} |");
        let _ = writeln!(out, "{num} | {line}");
        let width = if self.end_line == self.line {
            self.end_column.saturating_sub(self.column).max(1)
        } else {
            // A span that runs past the line: underline to its end.
            line.chars().count().saturating_sub(self.column - 1).max(1)
        };
        let _ = writeln!(out, "{pad} | {}{}", " ".repeat(self.column - 1), "^".repeat(width.max(1)));
        if let Some(h) = &self.hint {
            let _ = writeln!(out, "{pad} = hint: {h}");
        }
        out
    }
}

/// The nearest known name to `name`, if one is close enough to be a likely typo.
pub fn nearest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    known
        .into_iter()
        .map(|k| {
            let d = strsim::damerau_levenshtein(&lower, &k.to_lowercase());
            (d, k)
        })
        .filter(|(d, k)| {
            let len = k.chars().count().max(name.chars().count());
            *d <= 2.max(len / 3) && *d < len
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
        .map(|(_, k)| k)
}

/// `did you mean "x"?` for the nearest known name.
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    nearest(name, known).map(|k| format!("did you mean `{k}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_rendering() {
        let f = SourceFile::new("x.tl", "pattern a\n  from paymnts\n");
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(17), (2, 8));
        let d = f
            .diag(Span::new(17, 24), "unknown-stream", "unknown stream `paymnts`")
            .with_hint("did you mean `payments`?");
        expect_test::expect![[r#"
            x.tl:2:8: error[unknown-stream]: unknown stream `paymnts`
              |
            2 |   from paymnts
              |        ^^^^^^^
              = hint: did you mean `payments`?
        "#]]
        .assert_eq(&d.render());
    }

    #[test]
    fn nearest_names() {
        assert_eq!(nearest("ammount", ["amount", "account_id"]), Some("amount"));
        assert_eq!(nearest("zzz", ["amount", "account_id"]), None);
        assert_eq!(nearest("Amount", ["amount"]), Some("amount"));
    }
}
