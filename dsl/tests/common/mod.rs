//! Shared test support: the repository layout, the test catalog, golden-file comparison.
//! (The engine's tests that need the language, in `engine/testkit`, share `testkit`'s fixtures.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use dsl::{Catalog, FieldType, SourceFile, StreamSchema, TableDecl};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("dsl/ is in the repository").to_owned()
}

/// The streams of a config file (`[streams.NAME]` with `schema` and `timestamp_field`) and its
/// reference tables (`[tables.NAME]`).
pub fn catalog_from(config: &Path) -> Catalog {
    let text = std::fs::read_to_string(config).expect("config is readable");
    let table: toml::Table = text.parse().expect("config is TOML");
    let base = config.parent().expect("config has a directory");
    let mut catalog = Catalog::default();
    let streams = table.get("streams").and_then(|s| s.as_table()).expect("config has [streams]");
    for (name, s) in streams {
        let schema = s.get("schema").and_then(|v| v.as_str()).expect("stream has a schema");
        let ts = s.get("timestamp_field").and_then(|v| v.as_str());
        let json = std::fs::read_to_string(base.join(schema)).expect("schema is readable");
        catalog.insert(StreamSchema::from_avro_json(name, &json, ts).expect("schema is valid"));
    }
    tables_from(&table, &mut catalog);
    catalog
}

/// The reference tables of a config file (`[tables.NAME]` with `kind` = "list" or "map", `key`
/// and, for a map, `value`: "string", "int", "double" or "boolean").
fn tables_from(table: &toml::Table, catalog: &mut Catalog) {
    let ty = |t: &str| match t {
        "string" => FieldType::Str,
        "int" => FieldType::Int,
        "double" => FieldType::Float,
        "boolean" => FieldType::Bool,
        other => panic!("unknown table type {other}"),
    };
    let Some(tables) = table.get("tables").and_then(|t| t.as_table()) else { return };
    for (name, t) in tables {
        let field = |k: &str| t.get(k).and_then(|v| v.as_str()).map(ty);
        let key = field("key").expect("a table has a key type");
        let decl = match t.get("kind").and_then(|v| v.as_str()) {
            Some("list") => TableDecl::list(key),
            Some("map") => TableDecl::map(key, field("value").expect("a map has a value type")),
            other => panic!("table {name}: unknown kind {other:?}"),
        };
        catalog.insert_table(name.clone(), decl);
    }
}

/// The catalog the language tests use (`testdata/dsl/tripline.toml`).
pub fn test_catalog() -> Catalog {
    static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    CATALOG.get_or_init(|| catalog_from(&root().join("testdata/dsl/tripline.toml"))).clone()
}

/// Files of `dir` with extension `ext`, sorted.
pub fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// A source file named relative to the repository root, as diagnostics print it.
pub fn source(path: &Path) -> SourceFile {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.strip_prefix(root()).unwrap_or(path).display().to_string();
    SourceFile::new(name, text)
}

/// Compares `actual` with the golden file `expected`; with `UPDATE_EXPECT=1` rewrites it
/// instead (the expect-test convention). Returns a description of the mismatch, if any.
pub fn golden(expected: &Path, actual: &str) -> Option<String> {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(expected, actual).expect("write golden file");
        return None;
    }
    let want = std::fs::read_to_string(expected).unwrap_or_default();
    if want == actual {
        return None;
    }
    let mut msg = format!("{} differs (run with UPDATE_EXPECT=1 to accept):\n", expected.display());
    for (i, (w, a)) in want.lines().zip(actual.lines()).enumerate() {
        if w != a {
            msg.push_str(&format!("  first difference at line {}:\n    expected: {w}\n    actual:   {a}\n", i + 1));
            return Some(msg);
        }
    }
    msg.push_str(&format!("  expected {} lines, got {}\n", want.lines().count(), actual.lines().count()));
    Some(msg)
}
