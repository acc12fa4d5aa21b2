//! The service's layers, checked: every `crate::` (and `super::`) path in `service/src` is an
//! edge from the room of its file to the room it names, and each room may use only the rooms
//! ARCHITECTURE.md's table "Layers of `service/src`" lists for it, and none of the paths its
//! "never uses" column names (crates such as `rdkafka`, or `SystemTime::now`). No import cycles
//! between rooms, nor between the files of one room (a room's `mod.rs` aside: its children use
//! its types by nature).
//!
//! The table is the rule: change the architecture by changing the document, and this test
//! follows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("service/ is in the repository").to_owned()
}

/// A source file: its module path (`["serve", "commit"]`; `["serve"]` for `serve/mod.rs`).
#[derive(Debug)]
struct Module {
    path: Vec<String>,
    file: String,
    text: String,
}

/// One `crate::`/`super::` reference: from a module to a module path, at a line.
#[derive(Debug, Clone)]
struct Edge {
    from: Vec<String>,
    to: Vec<String>,
    file: String,
    line: usize,
}

/// What a room may use (rooms) and must never use (paths).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rule {
    uses: BTreeSet<String>,
    never: Vec<String>,
}

/// Rooms and their rules, read from the table under `heading` (the first cell names the room,
/// the last the rooms it may use, the one before it, in a table of four columns, what it never
/// uses).
fn rules(doc: &str, heading: &str) -> BTreeMap<String, Rule> {
    let start = doc.find(heading).unwrap_or_else(|| panic!("ARCHITECTURE.md has no section {heading:?}"));
    let mut rules = BTreeMap::new();
    for line in doc[start..].lines().skip(1) {
        if line.starts_with('#') {
            break;
        }
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if !line.trim_start().starts_with('|') || cells.len() < 3 || cells[0].starts_with("---") {
            continue;
        }
        let Some(room) = ticked(cells[0]).into_iter().next() else { continue };
        let room = room.trim_end_matches('/').trim_end_matches(".rs").to_owned();
        let uses: BTreeSet<String> = ticked(cells[cells.len() - 1]).into_iter().collect();
        let never = if cells.len() >= 4 { ticked(cells[cells.len() - 2]) } else { Vec::new() };
        rules.insert(room, Rule { uses, never });
    }
    assert!(!rules.is_empty(), "the table under {heading:?} lists no rooms");
    rules
}

/// The `backticked` words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// Every `.rs` file under `dir`, as modules of the crate rooted there.
fn modules(dir: &Path) -> Vec<Module> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable source dir") {
            let p = entry.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(dir).expect("under the root");
                let mut path: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
                let last = path.pop().expect("a file name");
                let stem = last.trim_end_matches(".rs");
                if stem != "mod" {
                    path.push(stem.to_owned());
                }
                let text = std::fs::read_to_string(&p).expect("readable source");
                out.push(Module { path, file: rel.display().to_string(), text });
            }
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// The code of a Rust file with comments and the contents of string and char literals blanked
/// (newlines kept, so line numbers stay).
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&b, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            out.push('"');
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                blank(&mut out, b[j]);
                j += 1;
            }
            out.push('"');
            i = j;
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
        } else if c == '\'' && is_char_literal(&b, i) {
            let mut j = i + 1;
            if b[j] == '\\' {
                j += 1;
            }
            while j < b.len() && b[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// Whether the `'` at `i` opens a char literal (`'x'`, `'\n'`, `'\u{..}'`) rather than a
/// lifetime or label.
fn is_char_literal(b: &[char], i: usize) -> bool {
    match b.get(i + 1) {
        Some('\\') => true,
        Some(_) => b.get(i + 2) == Some(&'\''),
        None => false,
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The module paths a `use` tree or path starting at `rest` names (after `crate::` or after
/// the `super::` chain), each as segments.
fn paths_at(rest: &str) -> Vec<Vec<String>> {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        // A group: split at top-level commas.
        let mut depth = 0;
        let mut items = Vec::new();
        let mut cur = String::new();
        for c in group.chars() {
            match c {
                '{' => {
                    depth += 1;
                    cur.push(c);
                }
                '}' if depth == 0 => break,
                '}' => {
                    depth -= 1;
                    cur.push(c);
                }
                ',' if depth == 0 => items.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        items.push(cur);
        return items.iter().filter(|s| !s.trim().is_empty()).flat_map(|s| paths_at(s)).collect();
    }
    let mut segments = Vec::new();
    let mut s = rest;
    loop {
        let ident: String = s.chars().take_while(|&c| is_ident(c)).collect();
        if ident.is_empty() {
            if s.starts_with('{') {
                // `a::b::{c, d}`: the prefix plus each item.
                return paths_at(s).into_iter().map(|tail| segments.iter().cloned().chain(tail).collect()).collect();
            }
            break;
        }
        s = &s[ident.len()..];
        segments.push(ident);
        match s.strip_prefix("::") {
            Some(more) => s = more.trim_start(),
            None => break,
        }
    }
    if segments.is_empty() {
        Vec::new()
    } else {
        vec![segments]
    }
}

/// Every `crate::`/`super::` path of a module, resolved to a module path from the crate root.
fn edges(m: &Module) -> Vec<Edge> {
    let code = code_only(&m.text);
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\n' {
            line += 1;
        }
        let at_word = i == 0 || !is_ident(chars[i - 1]) && chars[i - 1] != ':';
        if !at_word || !matches!(chars[i], 'c' | 's') {
            i += 1;
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 400)].iter().collect();
        if rest.starts_with("crate::") || rest.starts_with("super::") {
            // The base: the crate root, or the parent of this module per `super`.
            let (mut base, mut tail) = (Vec::new(), rest.as_str());
            if let Some(t) = tail.strip_prefix("crate::") {
                tail = t;
            } else {
                // `super` from a file module `a/b.rs` ([a, b]) is `a`; from `a/mod.rs` ([a]) the root.
                base = m.path.clone();
                while let Some(t) = tail.strip_prefix("super::") {
                    base.pop();
                    tail = t;
                }
            }
            for p in paths_at(tail) {
                let mut to = base.clone();
                to.extend(p);
                out.push(Edge { from: m.path.clone(), to, file: m.file.clone(), line });
            }
            i += "crate::".len();
            continue;
        }
        i += 1;
    }
    out
}

/// The lines where the code of `text` (not its comments or strings) names the path `path`, as
/// a whole word (`rdkafka::x`, `std::time::SystemTime::now()`, but not `my_rdkafka`).
fn mentions(text: &str, path: &str) -> Vec<usize> {
    let code = code_only(text);
    let mut lines = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let mut from = 0;
        while let Some(at) = line[from..].find(path).map(|i| i + from) {
            let before = line[..at].chars().next_back();
            let after = line[at + path.len()..].chars().next();
            if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
                lines.push(n + 1);
                break;
            }
            from = at + path.len();
        }
    }
    lines
}

/// A cycle in `graph`, if any, as the nodes along it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_owned(), 1);
        stack.push(n.to_owned());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Problems with `modules` under `rules` (rooms not in the table, forbidden edges, cycles), and
/// the room-to-room edges found.
fn check(modules: &[Module], rules: &BTreeMap<String, Rule>) -> (Vec<String>, BTreeSet<(String, String)>) {
    const ROOTS: [&str; 2] = ["lib", "main"];
    let mut problems = Vec::new();
    let rooms: BTreeSet<String> =
        modules.iter().filter_map(|m| m.path.first().cloned()).filter(|r| !ROOTS.contains(&r.as_str())).collect();
    for r in &rooms {
        if !rules.contains_key(r) {
            problems.push(format!("room `{r}` is not in ARCHITECTURE.md's layer table: add its row"));
        }
    }
    for r in rules.keys() {
        if !rooms.contains(r) {
            problems.push(format!("ARCHITECTURE.md's layer table lists `{r}`, which service/src does not have"));
        }
    }
    let mut room_graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut file_graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for m in modules {
        let Some(from_room) = m.path.first().filter(|r| !ROOTS.contains(&r.as_str())) else { continue };
        for never in rules.get(from_room).map(|r| r.never.as_slice()).unwrap_or_default() {
            for line in mentions(&m.text, never) {
                problems.push(format!(
                    "{}:{line}: `{from_room}` uses `{never}`, which ARCHITECTURE.md's layer table says it never uses",
                    m.file
                ));
            }
        }
        for e in edges(m) {
            let Some(to_room) = e.to.first() else { continue };
            if !rooms.contains(to_room) {
                continue; // a path into an item of the root (none today) or an external crate
            }
            if to_room != from_room {
                let allowed = rules.get(from_room).is_some_and(|r| r.uses.contains(to_room)) || to_room == "error";
                if !allowed {
                    problems.push(format!(
                        "{}:{}: `{from_room}` uses `{to_room}` (crate::{}), which ARCHITECTURE.md's layer table \
                         does not allow",
                        e.file,
                        e.line,
                        e.to.join("::")
                    ));
                }
                room_graph.entry(from_room.clone()).or_default().insert(to_room.clone());
                seen.insert((from_room.clone(), to_room.clone()));
            } else if e.from.len() >= 2 && e.to.len() >= 2 && e.from[1] != e.to[1] {
                // Between two files of one room (the room's mod.rs is `[room]` and stays out).
                file_graphs
                    .entry(from_room.clone())
                    .or_default()
                    .entry(e.from[1].clone())
                    .or_default()
                    .insert(e.to[1].clone());
            }
        }
    }
    if let Some(c) = cycle(&room_graph) {
        problems.push(format!("an import cycle between rooms: {}", c.join(" -> ")));
    }
    for (room, g) in &file_graphs {
        if let Some(c) = cycle(g) {
            problems.push(format!("an import cycle between the files of `{room}/`: {}", c.join(" -> ")));
        }
    }
    (problems, seen)
}

const HEADING: &str = "### Layers of `service/src`";

#[test]
fn the_service_follows_the_layers_of_architecture_md() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let rules = rules(&doc, HEADING);
    let modules = modules(&root().join("service/src"));
    let (problems, edges) = check(&modules, &rules);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The check sees the edges that make the service what it is.
    for (from, to) in [("serve", "core"), ("serve", "io"), ("replay", "audit"), ("cmd", "serve"), ("io", "core")] {
        assert!(edges.contains(&(from.to_owned(), to.to_owned())), "no edge {from} -> {to} found: {edges:?}");
    }
}

#[test]
fn the_check_finds_forbidden_edges_and_cycles() {
    let doc = "### Layers of `service/src`\n\n| room | what | never uses | may use |\n| --- | --- | --- | --- |\n\
               | `a/` | top | — | `b` |\n| `b/` | middle | — | `c` |\n| `c/` | bottom | `rdkafka`, `SystemTime::now` | — |\n";
    let rules = rules(doc, HEADING);
    assert_eq!(rules["a"].uses, BTreeSet::from(["b".to_owned()]));
    assert!(rules["c"].uses.is_empty());
    assert_eq!(rules["c"].never, ["rdkafka", "SystemTime::now"]);
    let module = |path: &[&str], text: &str| Module {
        path: path.iter().map(|s| s.to_string()).collect(),
        file: format!("{}.rs", path.join("/")),
        text: text.to_owned(),
    };
    let clean = [
        module(&["a"], "use crate::b::x;\nmod one;\n"),
        module(&["a", "one"], "use super::two::Y; // crate::c::forbidden in a comment\nlet s = \"crate::c::z\";\n"),
        module(&["a", "two"], "use crate::{b::{self, x}, error::Error};\n"),
        module(&["b"], "pub fn f() { crate::c::g() }\n"),
        module(
            &["c"],
            "use super::error::Error;\n// rdkafka::x in a comment, SystemTime::now too\nlet my_rdkafka = 1;\n",
        ),
        module(&["error"], ""),
    ];
    let mut rules_with_error = rules.clone();
    rules_with_error.insert("error".to_owned(), Rule::default());
    let (problems, edges) = check(&clean, &rules_with_error);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(edges.contains(&("a".to_owned(), "b".to_owned())) && edges.contains(&("b".to_owned(), "c".to_owned())));
    // Upwards, skipping a layer, a cycle between rooms, a cycle between files, an unknown room.
    let bad = [
        module(&["a"], "use crate::b::x;\n"),
        module(&["a", "one"], "use super::two::Y;\n"),
        module(&["a", "two"], "use crate::a::one::X;\n"),
        module(&["b"], "fn f() { crate::a::g(); }\n"),
        module(&["c"], "use crate::{a::x, b::y};\nlet t = std::time::SystemTime::now();\nuse rdkafka::Offset;\n"),
        module(&["d"], ""),
        module(&["error"], ""),
    ];
    let (problems, _) = check(&bad, &rules_with_error);
    let text = problems.join("\n");
    for want in [
        "b.rs:1: `b` uses `a`",
        "c.rs:1: `c` uses `a`",
        "c.rs:1: `c` uses `b`",
        "an import cycle between rooms: a -> b -> a",
        "an import cycle between the files of `a/`: one -> two -> one",
        "room `d` is not in ARCHITECTURE.md's layer table",
        "c.rs:2: `c` uses `SystemTime::now`",
        "c.rs:3: `c` uses `rdkafka`",
    ] {
        assert!(text.contains(want), "expected {want:?} in:\n{text}");
    }
}
