//! Source text to [`ast::File`]. The only module that sees pest types.
//!
//! A syntax error does not stop the parse: the clause it is in is blanked out (replaced by spaces,
//! keeping every offset) and the file is parsed again, so one run reports the syntax errors of
//! every clause and every pattern. Patterns that had a syntax error are not checked further.

use std::sync::OnceLock;

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use pest::Parser as _;

use crate::ast::*;
use crate::diag::{Diagnostic, SourceFile};

#[derive(pest_derive::Parser)]
#[grammar = "grammar.pest"]
struct Grammar;

/// At most this many syntax errors are reported for one file.
const MAX_SYNTAX_ERRORS: usize = 50;

/// Words that start a clause or a pattern at the beginning of a line: the recovery points.
const CLAUSE_WORDS: [&str; 12] =
    ["pattern", "version", "severity", "mode", "from", "key", "match", "where", "within", "skip", "message", "emit"];

/// The result of parsing one file.
#[derive(Debug)]
pub struct Parsed {
    pub file: File,
    /// Syntax errors, in source order.
    pub errors: Vec<Diagnostic>,
    /// Byte ranges that were blanked out to recover from errors.
    pub skipped: Vec<Span>,
}

impl Parsed {
    /// Whether a pattern lost text to error recovery (its checks would be misleading).
    pub fn damaged(&self, p: &Pattern) -> bool {
        self.skipped.iter().any(|s| s.start < p.span.end.max(p.span.start + 1) && s.end > p.span.start)
    }
}

/// Parses `src`, reporting every syntax error it can recover from.
pub fn parse(src: &SourceFile) -> Parsed {
    let mut text = src.text.clone();
    let mut errors = Vec::new();
    let mut skipped = Vec::new();
    loop {
        match Grammar::parse(Rule::file, &text) {
            Ok(mut pairs) => {
                let file = pairs.next().map(build_file).unwrap_or(File { patterns: Vec::new() });
                errors.sort_by_key(|d: &Diagnostic| (d.line, d.column));
                return Parsed { file, errors, skipped };
            }
            Err(e) => {
                let pos = match e.location {
                    InputLocation::Pos(p) => p,
                    InputLocation::Span((s, _)) => s,
                };
                errors.push(syntax_diag(src, &text, pos, &e.variant));
                let region = recovery_region(&text, pos);
                if errors.len() >= MAX_SYNTAX_ERRORS || region.end <= region.start {
                    // Give up on the rest of the file.
                    let rest = Span::new(region.start.min(text.len()), text.len());
                    skipped.push(rest);
                    blank(&mut text, rest);
                    if let Ok(mut pairs) = Grammar::parse(Rule::file, &text) {
                        let file = pairs.next().map(build_file).unwrap_or(File { patterns: Vec::new() });
                        errors.sort_by_key(|d: &Diagnostic| (d.line, d.column));
                        return Parsed { file, errors, skipped };
                    }
                    errors.sort_by_key(|d: &Diagnostic| (d.line, d.column));
                    return Parsed { file: File { patterns: Vec::new() }, errors, skipped };
                }
                skipped.push(region);
                blank(&mut text, region);
            }
        }
    }
}

fn blank(text: &mut String, span: Span) {
    let replaced: String =
        text[span.start..span.end].chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect::<String>();
    // Multi-byte characters become several spaces so that offsets stay put.
    let padded: String = replaced
        .chars()
        .zip(text[span.start..span.end].chars())
        .map(|(r, orig)| if r == '\n' { "\n".to_owned() } else { " ".repeat(orig.len_utf8()) })
        .collect();
    text.replace_range(span.start..span.end, &padded);
}

/// The first word of the line starting at `start`, if it is a clause or pattern keyword.
fn clause_word_at(text: &str, start: usize) -> Option<&'static str> {
    let line = &text[start..];
    let trimmed = line.trim_start_matches([' ', '\t', '\r']);
    CLAUSE_WORDS.into_iter().find(|w| {
        trimmed.starts_with(w) && !trimmed[w.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn line_starts(text: &str) -> Vec<usize> {
    let mut v = vec![0];
    v.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    v
}

/// The clause around `pos`: from the start of the line of the nearest clause keyword at or before
/// `pos` to the start of the next line that begins a clause (or a pattern, if the error is in a
/// pattern header).
fn recovery_region(text: &str, pos: usize) -> Span {
    let starts = line_starts(text);
    let pos = pos.min(text.len());
    let mut line = starts.partition_point(|&s| s <= pos).saturating_sub(1);
    // An error right at a clause keyword means the clause before it is incomplete.
    let at_line_start = text[starts[line]..pos].trim_start_matches([' ', '\t', '\r']).is_empty();
    if at_line_start && line > 0 && clause_word_at(text, starts[line]).is_some() {
        line -= 1;
    }
    let mut first = line;
    let mut word = clause_word_at(text, starts[line]);
    while word.is_none() && first > 0 {
        first -= 1;
        word = clause_word_at(text, starts[first]);
    }
    let in_header = word == Some("pattern") || word.is_none();
    let mut next = line + 1;
    while next < starts.len() {
        match clause_word_at(text, starts[next]) {
            Some("pattern") => break,
            Some(_) if !in_header => break,
            _ => next += 1,
        }
    }
    let end = starts.get(next).copied().unwrap_or(text.len());
    let start = if word.is_none() { pos } else { starts[first] };
    // Never blank nothing: at least the offending character, so the parse moves on.
    let end = if end <= start { (pos + 1).min(text.len()) } else { end };
    Span::new(start, end)
}

/// What a grammar rule means to an analyst. Clause keywords all read "a new clause".
fn describe(rule: Rule) -> Option<&'static str> {
    use Rule::*;
    Some(match rule {
        EOI => "end of file",
        ident | plain_ident => "a name",
        type_name => "a record type name",
        description | string => "a quoted string",
        template => "a quoted message",
        pattern | kw_pattern | version_clause | kw_version | severity_clause | kw_severity | mode_clause | kw_mode
        | from_clause | kw_from | key_clause | kw_key | match_clause | kw_match | where_clause | kw_where
        | within_clause | skip_clause | kw_skip | message_clause | kw_message | emit_clause | kw_emit => "a new clause",
        kw_within | element_window => "`within`",
        integer | negative_number => "a whole number",
        float => "a number",
        duration => "a duration such as `500ms`, `30s`, `10m`, `24h` or `7d`",
        contiguity | strict_next | followed_by | followed_by_any | not_next | not_followed_by | kw_followed => {
            "`next`, `followed by` (`any`), `not next`, `not followed by`"
        }
        element | var_decl | group => "an element (a variable or a `(` group)",

        quantifier | q_range | q_plus | q_star | q_optional => "a quantifier (`+`, `*`, `?`, `{n}`, `{n,m}`, `{n,}`)",
        modifier | kw_optional | kw_greedy | kw_consecutive | allow_combinations | kw_allow => {
            "a modifier (`optional`, `greedy`, `consecutive`, `allow combinations`)"
        }
        condition_def => "a condition `name: ...`",
        until_part | kw_until => "`until`",
        skip_none | skip_to_next | skip_past_last | skip_to_first | skip_to_last | w_none | w_to | w_past => {
            "a skip strategy (`none`, `to next`, `past last event`, `to first NAME`, `to last NAME`)"
        }
        w_first | w_last => "`first` or `last`",
        w_event => "`event`",
        w_list => "`list`",
        w_of | w_previous => "`of previous`",
        emit_field => "an output field `name: expression`",
        expr | primary | paren | if_expr | call | path | literal | boolean | null | kw_if | kw_true | kw_false
        | kw_null | op_neg => "an expression",
        op_or | op_and | op_eq | op_ne | op_le | op_ge | op_lt | op_gt | op_contains | op_starts | op_ends | op_add
        | op_sub | op_mul | op_div | op_rem | is_null | is_not_null | in_list | not_in_list | in_table
        | not_in_table | like | not_like | matches | not_matches | kw_is | kw_in | kw_like | kw_matches
        | kw_contains | kw_starts | kw_ends | kw_and | kw_or => "an operator",
        tpl_text | tpl_hole => "message text",
        distinct | kw_distinct => "`distinct`",
        lparen => "`(`",
        rparen => "`)`",
        lbrace => "`{`",
        rbrace => "`}`",
        colon => "`:`",
        comma => "`,`",
        kw_by => "`by`",
        kw_next => "`next`",
        kw_not | op_not => "`not`",
        kw_any => "`any`",
        kw_combinations => "`combinations`",
        kw_then => "`then`",
        kw_else => "`else`",
        kw_with => "`with`",
        _ => return None,
    })
}

/// The token at `pos`, in words.
fn found_at(text: &str, pos: usize) -> String {
    let rest = &text[pos.min(text.len())..];
    let rest = rest.trim_start_matches([' ', '\t']);
    match rest.chars().next() {
        None => "end of file".to_owned(),
        Some('\n') | Some('\r') => "end of line".to_owned(),
        Some(c) if c.is_alphanumeric() || c == '_' => format!("`{}`", word_at(rest)),
        Some('"') => "a string".to_owned(),
        Some(c) => format!("`{c}`"),
    }
}

fn word_at(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').take(40).collect()
}

/// Whether `word` is a reserved word of the language (a name with it must be in backticks).
pub fn is_keyword(word: &str) -> bool {
    Grammar::parse(Rule::keyword, word).map(|p| p.as_str().len() == word.len()).unwrap_or(false)
}

/// Keywords an analyst may have misspelled, for the alternatives an error expected.
fn keyword_candidates(expected: &[&str]) -> Vec<&'static str> {
    let mut v = Vec::new();
    for e in expected {
        match *e {
            "a new clause" => v.extend(CLAUSE_WORDS),
            "`within`" => v.push("within"),
            "`until`" => v.push("until"),
            "an operator" => v.extend(["and", "or", "like", "matches", "contains", "starts", "ends", "in", "is"]),
            "a modifier (`optional`, `greedy`, `consecutive`, `allow combinations`)" => {
                v.extend(["optional", "greedy", "consecutive", "allow"])
            }
            "`next`, `followed by` (`any`), `not next`, `not followed by`" => v.extend(["next", "followed", "not"]),
            _ => {}
        }
    }
    v
}

/// Byte offset of the innermost `(` still open at `pos`, counting from `from` (strings and
/// comments skipped).
fn unclosed_paren(text: &str, from: usize, pos: usize) -> Option<usize> {
    let b = text.as_bytes();
    let mut open = Vec::new();
    let mut i = from;
    while i < pos.min(b.len()) {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q && b[i] != b'\n' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' => open.push(i),
            b')' => {
                open.pop();
            }
            _ => {}
        }
        i += 1;
    }
    open.pop()
}

/// Start of the clause or pattern around `pos` (the line of the nearest clause keyword).
fn clause_start(text: &str, pos: usize) -> usize {
    let starts = line_starts(text);
    let mut line = starts.partition_point(|&s| s <= pos).saturating_sub(1);
    loop {
        if clause_word_at(text, starts[line]).is_some() || line == 0 {
            return starts[line];
        }
        line -= 1;
    }
}

fn syntax_diag(src: &SourceFile, text: &str, pos: usize, variant: &ErrorVariant<Rule>) -> Diagnostic {
    let mut expected: Vec<&'static str> = Vec::new();
    if let ErrorVariant::ParsingError { positives, .. } = variant {
        for r in positives {
            if let Some(d) = describe(*r) {
                if !expected.contains(&d) {
                    expected.push(d);
                }
            }
        }
    }
    let pos = pos.min(text.len());
    let token_start = pos + (text[pos..].len() - text[pos..].trim_start_matches([' ', '\t']).len());
    let found = found_at(text, pos);
    // Inside an expression, say "an operator" once and first; drop what only pads the list.
    if expected.contains(&"an operator") {
        expected.retain(|d| *d != "`not`" && *d != "an operator");
        expected.insert(0, "an operator");
    }
    if expected.len() > 1 {
        expected.retain(|d| *d != "end of file");
    }
    let list = |items: &[&str]| match items.len() {
        0 => "something else".to_owned(),
        1 => items[0].to_owned(),
        n => format!("{} or {}", items[..n - 1].join(", "), items[n - 1]),
    };

    // An unclosed message or string: point at its opening quote.
    if expected.contains(&"message text") && (found == "end of line" || found == "end of file") {
        let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
        let quote = text[line_start..pos].find('"').map_or(pos, |i| line_start + i);
        return src
            .diag(Span::new(quote, quote + 1), "syntax", "this message is not closed")
            .with_hint("add `\"` at the end of the message (a message stays on one line)");
    }
    if let Some(q @ ('"' | '\'')) = text[token_start..].chars().next() {
        let line_end = text[token_start + 1..].find('\n').map_or(text.len(), |i| token_start + 1 + i);
        if !text[token_start + 1..line_end].contains(q) {
            return src
                .diag(Span::new(token_start, token_start + 1), "syntax", "this string is not closed")
                .with_hint(format!("add `{q}` at the end of the text (a string stays on one line)"));
        }
    }
    // A `(` left open: point at it.
    if expected.contains(&"`)`") && !found.starts_with("`)") {
        if let Some(open) = unclosed_paren(text, clause_start(text, pos), pos) {
            return src
                .diag(Span::new(open, open + 1), "syntax", "this `(` is not closed")
                .with_hint(format!("add `)` where the parenthesised part ends; found {found} instead"));
        }
    }

    // An error at the start of a line usually means the line before stopped too early: point
    // at the end of that line and name the word the missing piece should follow.
    let line_start = text[..token_start].rfind('\n').map_or(0, |i| i + 1);
    let at_line_start = token_start > 0 && text[line_start..token_start].trim().is_empty();
    let before = text[..line_start].trim_end();
    let prev_word: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect::<String>()
        .chars()
        .rev()
        .collect();
    let starts_clause = found == "end of file" || CLAUSE_WORDS.iter().any(|w| found == format!("`{w}`"));
    if at_line_start && starts_clause && !before.is_empty() && !prev_word.is_empty() && !before.ends_with(['}', ')']) {
        let end = before.len();
        let what = list(&expected);
        let d = src.diag(
            Span::new(end.saturating_sub(prev_word.len()), end),
            "syntax",
            format!("expected {what} after `{prev_word}`"),
        );
        let hint = match prev_word.as_str() {
            "from" => Some("name the stream, e.g. `from payments`".to_owned()),
            "key" => Some("name the key field, e.g. `key account_id`".to_owned()),
            "by" | "next" | "any" | "match" => Some("an element (a variable name) must follow".to_owned()),
            _ => None,
        };
        return d.with_hint_opt(hint);
    }

    let word_len = text[token_start..]
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .map(char::len_utf8)
        .sum::<usize>()
        .max(1);
    let span = Span::new(token_start, (token_start + word_len).min(text.len()).max(token_start));
    let d = src.diag(span, "syntax", format!("expected {}, found {found}", list(&expected)));
    let word = found.trim_matches('`');
    let wants_name = expected.iter().any(|e| {
        matches!(
            *e,
            "a name"
                | "an expression"
                | "an element (a variable or a `(` group)"
                | "an output field `name: expression`"
        )
    });
    let hint = if found.starts_with('`') && is_keyword(word) && wants_name {
        Some(format!("`{word}` is a keyword; to use a field or variable with this name write `` `{word}` ``"))
    } else if found == "`=`" {
        Some("compare with `==`".to_owned())
    } else if found == "`&`" || found == "`|`" {
        Some("combine conditions with `and` / `or`".to_owned())
    } else if found == "end of file" && expected.contains(&"`)`") {
        Some("a `(` is not closed".to_owned())
    } else if found.starts_with('`') && !is_keyword(word) && word.chars().all(|c| c.is_alphanumeric() || c == '_') {
        crate::diag::did_you_mean(word, keyword_candidates(&expected))
    } else {
        None
    };
    d.with_hint_opt(hint)
}

// ---------------------------------------------------------------------------------------------
// Tree building. The grammar guarantees the shapes matched below.
// ---------------------------------------------------------------------------------------------

/// The span of a pair without the trailing whitespace pest's implicit WHITESPACE leaves in
/// non-atomic rules.
fn span(p: &Pair<'_, Rule>) -> Span {
    let s = p.as_span();
    let trimmed = s.as_str().trim_end_matches([' ', '\t', '\r', '\n', '\u{FEFF}']);
    Span::new(
        s.start(),
        s.start() + trimmed.len().max(if s.as_str().is_empty() { 0 } else { 1 }).min(s.end() - s.start()),
    )
}

fn ident(p: Pair<'_, Rule>) -> Ident {
    let s = p.as_str();
    let name = s.strip_prefix('`').and_then(|s| s.strip_suffix('`')).unwrap_or(s);
    Ident { name: name.to_owned(), span: span(&p) }
}

fn build_file(p: Pair<'_, Rule>) -> File {
    File { patterns: p.into_inner().filter(|p| p.as_rule() == Rule::pattern).map(build_pattern).collect() }
}

fn build_pattern(p: Pair<'_, Rule>) -> Pattern {
    let sp = span(&p);
    let mut inner = p.into_inner();
    inner.next(); // kw_pattern
    let name = inner.next().map(ident).unwrap_or(Ident { name: String::new(), span: sp });
    let mut description = None;
    let mut clauses = Vec::new();
    for c in inner {
        if c.as_rule() == Rule::description {
            let s = span(&c);
            let text = c.into_inner().next().map(|s| unquote(s.as_str())).unwrap_or_default();
            description = Some((text, s));
        } else {
            clauses.push(build_clause(c));
        }
    }
    Pattern { name, description, clauses, span: sp }
}

/// The text of a quoted string: `\n`, `\t`, `\\` and escaped quotes are translated; any other
/// backslash is kept, so that `matches "\d+"` and `like "50\%"` mean what they say.
fn unquote(s: &str) -> String {
    let body = &s[1..s.len().saturating_sub(1).max(1)];
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(q @ ('\\' | '"' | '\'')) => out.push(q),
                Some(o) => {
                    out.push('\\');
                    out.push(o);
                }
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_int(s: &str) -> Option<u64> {
    s.replace('_', "").parse().ok()
}

fn duration_ms(p: &Pair<'_, Rule>) -> Option<i64> {
    let s = p.as_str();
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    let n: i64 = digits.parse().ok()?;
    let mult = match &s[digits.len()..] {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 86_400_000,
    };
    n.checked_mul(mult)
}

fn build_clause(c: Pair<'_, Rule>) -> Clause {
    let rule = c.as_rule();
    let mut inner = c.into_inner();
    let kw = inner.next().expect("grammar: clause keyword");
    let keyword = span(&kw);
    let mut next = || inner.next().expect("grammar: clause body");
    let kind = match rule {
        Rule::version_clause => {
            let n = next();
            // Out-of-range numbers become u64::MAX; the checker reports them.
            ClauseKind::Version(parse_int(n.as_str()).unwrap_or(u64::MAX), span(&n))
        }
        Rule::severity_clause => ClauseKind::Severity(ident(next())),
        Rule::mode_clause => ClauseKind::Mode(ident(next())),
        Rule::from_clause => ClauseKind::From(ident(next())),
        Rule::key_clause => ClauseKind::Key(next().into_inner().map(ident).collect()),
        Rule::match_clause => ClauseKind::Match(build_sequence(next())),
        Rule::where_clause => {
            let mut defs = vec![build_condition(next())];
            defs.extend(inner.map(build_condition));
            ClauseKind::Where(defs)
        }
        Rule::within_clause => {
            let d = next();
            ClauseKind::Within(duration_ms(&d).unwrap_or(-1), span(&d))
        }
        Rule::skip_clause => {
            let s = next();
            let r = s.as_rule();
            let last_ident = s.into_inner().filter(|p| p.as_rule() == Rule::ident).map(ident).next();
            ClauseKind::Skip(match (r, last_ident) {
                (Rule::skip_to_next, _) => Skip::ToNext,
                (Rule::skip_past_last, _) => Skip::PastLastEvent,
                (Rule::skip_to_first, Some(i)) => Skip::ToFirst(i),
                (Rule::skip_to_last, Some(i)) => Skip::ToLast(i),
                _ => Skip::None,
            })
        }
        Rule::message_clause => ClauseKind::Message(build_template(next())),
        Rule::emit_clause => {
            ClauseKind::Emit(inner.filter(|p| p.as_rule() == Rule::emit_field).map(build_emit_field).collect())
        }
        r => unreachable!("grammar: unexpected clause {r:?}"),
    };
    Clause { kind, keyword }
}

fn build_emit_field(p: Pair<'_, Rule>) -> EmitField {
    let mut inner = p.into_inner();
    let first = inner.next().expect("grammar: emit field");
    if first.as_rule() == Rule::path {
        let expr = build_path(first);
        let name = match &expr.kind {
            ExprKind::Path(segs) => segs.last().cloned().expect("grammar: non-empty path"),
            _ => unreachable!(),
        };
        EmitField { name, expr }
    } else {
        let name = ident(first);
        inner.next(); // colon
        let expr = build_expr(inner.next().expect("grammar: emit expression"));
        EmitField { name, expr }
    }
}

fn build_template(p: Pair<'_, Rule>) -> Template {
    let sp = span(&p);
    let mut parts = Vec::new();
    for part in p.into_inner() {
        match part.as_rule() {
            Rule::tpl_text => {
                let raw = part.as_str();
                let mut s = String::new();
                let mut chars = raw.chars().peekable();
                while let Some(c) = chars.next() {
                    match c {
                        '{' | '}' => {
                            chars.next();
                            s.push(c);
                        }
                        '\\' => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(o) => s.push(o),
                            None => {}
                        },
                        c => s.push(c),
                    }
                }
                parts.push(TemplatePart::Text(s));
            }
            Rule::tpl_hole => {
                let e = part.into_inner().next().expect("grammar: template hole");
                parts.push(TemplatePart::Hole(build_expr(e)));
            }
            _ => {}
        }
    }
    Template { parts, span: sp }
}

fn build_condition(p: Pair<'_, Rule>) -> ConditionDef {
    let mut inner = p.into_inner();
    let var = ident(inner.next().expect("grammar: condition name"));
    inner.next(); // colon
    let cond = build_expr(inner.next().expect("grammar: condition"));
    let until = inner.next().map(|u| build_expr(u.into_inner().nth(1).expect("grammar: until expression")));
    ConditionDef { var, cond, until }
}

fn build_sequence(p: Pair<'_, Rule>) -> Sequence {
    let mut inner = p.into_inner();
    let first = build_element(inner.next().expect("grammar: first element"));
    let mut rest = Vec::new();
    while let (Some(c), Some(e)) = (inner.next(), inner.next()) {
        let sp = span(&c);
        let kind = match c.into_inner().next().map(|p| p.as_rule()) {
            Some(Rule::strict_next) => Contiguity::Next,
            Some(Rule::followed_by_any) => Contiguity::FollowedByAny,
            Some(Rule::not_next) => Contiguity::NotNext,
            Some(Rule::not_followed_by) => Contiguity::NotFollowedBy,
            _ => Contiguity::FollowedBy,
        };
        rest.push((kind, sp, build_element(e)));
    }
    Sequence { first, rest }
}

fn build_element(p: Pair<'_, Rule>) -> Element {
    let sp = span(&p);
    let mut inner = p.into_inner();
    let head = inner.next().expect("grammar: element head");
    let kind = if head.as_rule() == Rule::group {
        let seq = head.into_inner().find(|p| p.as_rule() == Rule::sequence).expect("grammar: group body");
        ElementKind::Group(Box::new(build_sequence(seq)))
    } else {
        let mut parts = head.into_inner();
        let name = ident(parts.next().expect("grammar: variable"));
        let ty = parts
            .find(|p| p.as_rule() == Rule::type_name)
            .map(|t| Ident { name: t.as_str().to_owned(), span: span(&t) });
        ElementKind::Var { name, ty }
    };
    let mut quantifier = None;
    let mut modifiers = Vec::new();
    let mut window = None;
    for part in inner {
        let s = span(&part);
        match part.as_rule() {
            Rule::quantifier => {
                let q = part.into_inner().next().expect("grammar: quantifier");
                let kind = match q.as_rule() {
                    Rule::q_plus => Quantifier::Plus,
                    Rule::q_star => Quantifier::Star,
                    Rule::q_optional => Quantifier::Optional,
                    _ => {
                        // `{n}`, `{n,}` or `{n,m}`: integers and whether a comma separates them.
                        let parts: Vec<(Rule, &str)> = q.into_inner().map(|n| (n.as_rule(), n.as_str())).collect();
                        let ints: Vec<u64> = parts
                            .iter()
                            .filter(|(r, _)| *r == Rule::integer)
                            .map(|(_, t)| parse_int(t).unwrap_or(u64::MAX))
                            .collect();
                        let has_comma = parts.iter().any(|(r, _)| *r == Rule::comma);
                        let min = ints.first().copied().unwrap_or(u64::MAX);
                        let max = match (has_comma, ints.get(1)) {
                            (false, _) => Some(min),
                            (true, Some(m)) => Some(*m),
                            (true, None) => None,
                        };
                        Quantifier::Range { min, max }
                    }
                };
                quantifier = Some((kind, s));
            }
            Rule::modifier => {
                let m = match part.into_inner().next().map(|p| p.as_rule()) {
                    Some(Rule::kw_optional) => Modifier::Optional,
                    Some(Rule::kw_greedy) => Modifier::Greedy,
                    Some(Rule::kw_consecutive) => Modifier::Consecutive,
                    _ => Modifier::AllowCombinations,
                };
                modifiers.push((m, s));
            }
            Rule::element_window => {
                let d = part.into_inner().find(|p| p.as_rule() == Rule::duration).expect("grammar: duration");
                window = Some((duration_ms(&d).unwrap_or(-1), span(&d)));
            }
            _ => {}
        }
    }
    Element { kind, quantifier, modifiers, window, span: sp }
}

fn pratt() -> &'static PrattParser<Rule> {
    static P: OnceLock<PrattParser<Rule>> = OnceLock::new();
    P.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::op_or, Assoc::Left))
            .op(Op::infix(Rule::op_and, Assoc::Left))
            .op(Op::prefix(Rule::op_not))
            .op(Op::infix(Rule::op_eq, Assoc::Left)
                | Op::infix(Rule::op_ne, Assoc::Left)
                | Op::infix(Rule::op_lt, Assoc::Left)
                | Op::infix(Rule::op_le, Assoc::Left)
                | Op::infix(Rule::op_gt, Assoc::Left)
                | Op::infix(Rule::op_ge, Assoc::Left)
                | Op::infix(Rule::op_contains, Assoc::Left)
                | Op::infix(Rule::op_starts, Assoc::Left)
                | Op::infix(Rule::op_ends, Assoc::Left)
                | Op::postfix(Rule::is_null)
                | Op::postfix(Rule::is_not_null)
                | Op::postfix(Rule::in_list)
                | Op::postfix(Rule::not_in_list)
                | Op::postfix(Rule::in_table)
                | Op::postfix(Rule::not_in_table)
                | Op::postfix(Rule::like)
                | Op::postfix(Rule::not_like)
                | Op::postfix(Rule::matches)
                | Op::postfix(Rule::not_matches))
            .op(Op::infix(Rule::op_add, Assoc::Left) | Op::infix(Rule::op_sub, Assoc::Left))
            .op(Op::infix(Rule::op_mul, Assoc::Left)
                | Op::infix(Rule::op_div, Assoc::Left)
                | Op::infix(Rule::op_rem, Assoc::Left))
            .op(Op::prefix(Rule::op_neg))
    })
}

fn build_expr(p: Pair<'_, Rule>) -> Expr {
    pratt()
        .map_primary(build_primary)
        .map_prefix(|op, rhs| {
            let sp = span(&op).to(rhs.span);
            let u = if op.as_rule() == Rule::op_not { UnOp::Not } else { UnOp::Neg };
            Expr { kind: ExprKind::Unary(u, Box::new(rhs)), span: sp }
        })
        .map_postfix(|lhs, op| {
            let sp = lhs.span.to(span(&op));
            let rule = op.as_rule();
            let kind = match rule {
                Rule::is_null | Rule::is_not_null => {
                    ExprKind::IsNull { expr: Box::new(lhs), negated: rule == Rule::is_not_null }
                }
                Rule::in_list | Rule::not_in_list => ExprKind::In {
                    expr: Box::new(lhs),
                    list: op.into_inner().filter(|p| is_literal(p.as_rule())).map(build_primary).collect(),
                    negated: rule == Rule::not_in_list,
                },
                Rule::in_table | Rule::not_in_table => ExprKind::InTable {
                    expr: Box::new(lhs),
                    table: ident(op.into_inner().find(|p| p.as_rule() == Rule::ident).expect("grammar: table name")),
                    negated: rule == Rule::not_in_table,
                },
                _ => {
                    let s = op.into_inner().find(|p| p.as_rule() == Rule::string).expect("grammar: pattern string");
                    ExprKind::Like {
                        expr: Box::new(lhs),
                        pattern: unquote(s.as_str()),
                        pattern_span: span(&s),
                        regex: matches!(rule, Rule::matches | Rule::not_matches),
                        negated: matches!(rule, Rule::not_like | Rule::not_matches),
                    }
                }
            };
            Expr { kind, span: sp }
        })
        .map_infix(|lhs, op, rhs| {
            let sp = lhs.span.to(rhs.span);
            let b = match op.as_rule() {
                Rule::op_or => BinOp::Or,
                Rule::op_and => BinOp::And,
                Rule::op_eq => BinOp::Eq,
                Rule::op_ne => BinOp::Ne,
                Rule::op_lt => BinOp::Lt,
                Rule::op_le => BinOp::Le,
                Rule::op_gt => BinOp::Gt,
                Rule::op_ge => BinOp::Ge,
                Rule::op_contains => BinOp::Contains,
                Rule::op_starts => BinOp::StartsWith,
                Rule::op_ends => BinOp::EndsWith,
                Rule::op_add => BinOp::Add,
                Rule::op_sub => BinOp::Sub,
                Rule::op_mul => BinOp::Mul,
                Rule::op_div => BinOp::Div,
                _ => BinOp::Rem,
            };
            Expr { kind: ExprKind::Binary(b, Box::new(lhs), Box::new(rhs)), span: sp }
        })
        .parse(p.into_inner())
}

fn is_literal(r: Rule) -> bool {
    matches!(
        r,
        Rule::negative_number
            | Rule::duration
            | Rule::float
            | Rule::integer
            | Rule::string
            | Rule::boolean
            | Rule::null
    )
}

fn build_path(p: Pair<'_, Rule>) -> Expr {
    let sp = span(&p);
    Expr { kind: ExprKind::Path(p.into_inner().map(ident).collect()), span: sp }
}

fn build_primary(p: Pair<'_, Rule>) -> Expr {
    let sp = span(&p);
    let kind = match p.as_rule() {
        Rule::integer => match parse_int(p.as_str()).and_then(|n| i64::try_from(n).ok()) {
            Some(n) => ExprKind::Int(n),
            // Too large for an integer: keep it as a float (the checker warns about precision nowhere).
            None => ExprKind::Float(p.as_str().replace('_', "").parse().unwrap_or(f64::INFINITY)),
        },
        Rule::float => ExprKind::Float(p.as_str().parse().unwrap_or(f64::NAN)),
        Rule::duration => ExprKind::Duration(duration_ms(&p).unwrap_or(-1)),
        Rule::string => ExprKind::Str(unquote(p.as_str())),
        Rule::boolean => ExprKind::Bool(p.into_inner().next().map(|k| k.as_rule()) == Some(Rule::kw_true)),
        Rule::null => ExprKind::Null,
        Rule::path => return build_path(p),
        Rule::negative_number => {
            let inner = build_primary(p.into_inner().next().expect("grammar: number"));
            match inner.kind {
                ExprKind::Int(i) => ExprKind::Int(-i),
                ExprKind::Float(f) => ExprKind::Float(-f),
                k => k,
            }
        }
        Rule::paren => {
            let e = p.into_inner().find(|p| p.as_rule() == Rule::expr).expect("grammar: parenthesised expression");
            let mut inner = build_expr(e);
            inner.span = sp;
            return inner;
        }
        Rule::if_expr => {
            let mut parts = p.into_inner().filter(|p| p.as_rule() == Rule::expr).map(build_expr);
            let c = parts.next().expect("grammar: if condition");
            let t = parts.next().expect("grammar: then branch");
            let e = parts.next().expect("grammar: else branch");
            ExprKind::If(Box::new(c), Box::new(t), Box::new(e))
        }
        Rule::call => {
            let mut name = None;
            let mut distinct = false;
            let mut args = Vec::new();
            for part in p.into_inner() {
                match part.as_rule() {
                    Rule::ident => name = Some(ident(part)),
                    Rule::distinct => distinct = true,
                    Rule::expr => args.push(build_expr(part)),
                    _ => {}
                }
            }
            ExprKind::Call { name: name.expect("grammar: call name"), distinct, args }
        }
        Rule::expr => return build_expr(p),
        r => unreachable!("grammar: unexpected primary {r:?}"),
    };
    Expr { kind, span: sp }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Parsed {
        parse(&SourceFile::new("t.tl", s))
    }

    #[test]
    fn parses_the_design_sketch() {
        let p = parse_str(
            r#"
pattern rapid_price_manipulation
  "Price moves more than 5% across a burst of 5+ trades within 2 seconds"
  version 3
  severity high
  from trades                    # stream name
  key symbol
  match first
        followed by burst{5,}
        followed by last
  where
    burst: kind == "trade"
    last:  abs(last.price - first.price) / first.price > 0.05
  within 2s
  skip past last event
  message "{symbol} moved from {first.price} to {last.price}"
  emit { symbol, p1: first.price, p2: last.price, trades: count(burst) }
"#,
        );
        assert!(p.errors.is_empty(), "{:#?}", p.errors);
        assert_eq!(p.file.patterns.len(), 1);
        assert_eq!(p.file.patterns[0].clauses.len(), 10);
    }

    #[test]
    fn precedence() {
        let p = parse_str("pattern a match x where x: not a + b * c > 3 and d in (1, 2) or e is null\n");
        assert!(p.errors.is_empty(), "{:#?}", p.errors);
        let ClauseKind::Where(defs) = &p.file.patterns[0].clauses[1].kind else { panic!() };
        let ExprKind::Binary(BinOp::Or, lhs, _) = &defs[0].cond.kind else { panic!("{:?}", defs[0].cond) };
        let ExprKind::Binary(BinOp::And, not, _) = &lhs.kind else { panic!() };
        assert!(matches!(not.kind, ExprKind::Unary(UnOp::Not, _)));
    }

    #[test]
    fn recovers_and_reports_every_clause() {
        let p = parse_str("pattern a\n  from\n  key k\n  match x followed y\n  within 2\npattern b\n  from s\n");
        let lines: Vec<usize> = p.errors.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 4, 5], "{:#?}", p.errors);
        assert_eq!(p.file.patterns.len(), 2);
    }
}
