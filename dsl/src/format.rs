//! The canonical layout of pattern files (`tripline fmt`). Only whitespace changes, and only
//! at the start and the end of lines and between them, so the meaning cannot (the caller
//! checks that the content hashes are the same before and after, which also guards against a
//! line break inside a string):
//!
//! - `pattern` at column 0; the description on its own line and every clause keyword
//!   (`version`, `severity`, `mode`, `from`, `key`, `match`, `where`, `within`, `skip`,
//!   `message`, `emit`) at column 2;
//! - a `match` clause's further lines at column 8, under its first element;
//! - a `where` clause's conditions at column 4 (`name: condition`), each condition's further
//!   lines under its first character, an `until` at column 6; an `emit` block's fields at 4, its `}` at 2; any other
//!   clause's further lines at 4; a further line inside an open parenthesis just after it;
//! - a comment line at the column of the code line after it (column 0 before a `pattern`);
//! - no trailing whitespace, tabs as spaces, at most one blank line in a row, none at the start,
//!   exactly one newline at the end.

/// Clause keywords: at the start of a line inside a pattern, each begins a clause.
const CLAUSES: [&str; 11] =
    ["version", "severity", "mode", "from", "key", "match", "where", "within", "skip", "message", "emit"];

/// Where a line is, for its indentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// Outside any pattern.
    Top,
    /// After `pattern NAME`, before a clause.
    Header,
    Clause(Clause),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clause {
    Match,
    /// With the column of the current condition's first character.
    Where(usize),
    Emit,
    Other,
}

/// The first word of a line: letters, digits and underscores.
fn first_word(line: &str) -> &str {
    let end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(line.len());
    &line[..end]
}

/// `name:` at the start of a where line: the offset of the condition after it.
fn label(line: &str) -> Option<usize> {
    let word = first_word(line);
    if word.is_empty() || word.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        return None;
    }
    let rest = line[word.len()..].trim_start();
    let after = rest.strip_prefix(':')?;
    let colon = line.len() - rest.len();
    let gap = after.len() - after.trim_start().len();
    Some(colon + 1 + if after.trim().is_empty() { 1 } else { gap })
}

/// Follows the parentheses of `line`, written at column `col`: `open` holds the columns of
/// those still open (in strings, backticks and after a comment, nothing counts).
fn track_parens(line: &str, col: usize, open: &mut Vec<usize>) {
    let mut quote: Option<char> = None;
    for (i, c) in line.chars().enumerate() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '#') => break,
            (None, '(') => open.push(col + i),
            (None, ')') => {
                open.pop();
            }
            _ => {}
        }
    }
}

/// The file in the canonical layout.
pub fn format(text: &str) -> String {
    let lines: Vec<String> = text.lines().map(|l| l.replace('\t', "    ").trim().to_owned()).collect();
    // The indentation of each code line; comments and blank lines after.
    let mut indent: Vec<Option<usize>> = vec![None; lines.len()];
    let mut at = At::Top;
    // Columns of the parentheses open at the end of the line before, in the current clause or
    // condition.
    let mut open: Vec<usize> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let word = first_word(line);
        let before = at;
        let col = if word == "pattern" {
            at = At::Header;
            0
        } else if at == At::Top {
            0
        } else if CLAUSES.contains(&word)
            && !(at == At::Clause(Clause::Match) && word == "within" && line.ends_with("previous"))
        {
            at = At::Clause(match word {
                "match" => Clause::Match,
                "where" => match label(line[word.len()..].trim_start()) {
                    Some(off) => Clause::Where(2 + line.len() - line[word.len()..].trim_start().len() + off),
                    None => Clause::Where(4),
                },
                "emit" => Clause::Emit,
                _ => Clause::Other,
            });
            2
        } else {
            match at {
                At::Top => 0,
                At::Header => 2,
                At::Clause(Clause::Match) => 8,
                // `until` two columns in from its condition's name; its further lines under
                // its condition.
                At::Clause(Clause::Where(_)) if word == "until" => {
                    at = At::Clause(Clause::Where(6 + "until ".len()));
                    6
                }
                At::Clause(Clause::Where(cont)) => match label(line) {
                    Some(off) => {
                        at = At::Clause(Clause::Where(4 + off));
                        4
                    }
                    None => cont,
                },
                At::Clause(Clause::Emit) if line.starts_with('}') => 2,
                At::Clause(Clause::Emit | Clause::Other) => 4,
            }
        };
        // A new clause, condition or emitted field starts with nothing open; a further line
        // inside an open parenthesis goes just after it.
        let starts = at != before || col <= 4;
        if starts {
            open.clear();
        }
        let col = match open.last() {
            Some(&p) if !starts => p + 1,
            _ => col,
        };
        track_parens(line, col, &mut open);
        indent[i] = Some(col);
    }
    // A comment takes the indentation of the code line after it.
    let mut next = 0;
    for i in (0..lines.len()).rev() {
        match indent[i] {
            Some(c) => next = c,
            None if lines[i].starts_with('#') => indent[i] = Some(next),
            None => {}
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut blank = false;
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if blank {
            out.push('\n');
            blank = false;
        }
        out.extend(std::iter::repeat_n(' ', indent[i].unwrap_or(0)));
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messy_pattern_gets_the_canonical_layout_once_and_for_all() {
        let messy = "\n\n# Card testing\n\t\tpattern  t \"d\"\n version 1\n      from card_auths\nkey card_id   \nmatch a+\n followed by b\n  where\n a: amount < 2\n  and x > 1\n   b:  amount > 100\n          # the last condition\n  and y\n emit {\nx,\n }\n\n\n\n  within 10m\n";
        let want = "# Card testing\npattern  t \"d\"\n  version 1\n  from card_auths\n  key card_id\n  match a+\n        followed by b\n  where\n    a: amount < 2\n       and x > 1\n    b:  amount > 100\n        # the last condition\n        and y\n  emit {\n    x,\n  }\n\n  within 10m\n";
        assert_eq!(format(messy), want);
        assert_eq!(format(want), want, "idempotent");
    }

    #[test]
    fn an_element_window_stays_in_the_match_clause() {
        let text = "pattern p\n  match a\n        followed by b\n        within 10m of previous\n  within 1h\n";
        assert_eq!(format(text), text);
    }
}

#[cfg(test)]
mod library {
    use super::format;

    /// The library's pattern files, by name.
    fn library() -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../patterns");
        let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
            .expect("patterns/")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "tl"))
            .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).expect("readable")))
            .collect();
        files.sort();
        assert!(files.len() >= 12);
        files
    }

    #[test]
    fn the_library_is_in_the_canonical_layout() {
        for (name, text) in library() {
            assert_eq!(format(&text), text, "{name}: run `tripline fmt patterns/`");
        }
    }

    #[test]
    fn any_indentation_of_a_library_file_formats_back_to_it() {
        for (name, text) in library() {
            let flat: String = text.lines().map(|l| format!("{}\n", l.trim_start())).collect();
            assert_eq!(format(&flat), text, "{name}: from no indentation");
            let deep: String =
                text.lines().enumerate().map(|(i, l)| format!("{}{}  \n", " ".repeat(i % 7), l.trim_start())).collect();
            assert_eq!(format(&deep), text, "{name}: from any indentation");
        }
    }
}
