//! Test support for the engine where it needs the pattern language: patterns are written in the
//! language and compiled with `dsl`, then run by `engine` (which cannot depend on `dsl`, not even
//! for its tests). This crate holds those tests (`tests/`), the micro-benchmarks (`benches/`),
//! the FlinkCEP conformance runner ([`conformance`]) and the fixtures they share, below.
//!
//! The fixtures read the repository's files and panic, naming the file, when one is missing or
//! invalid: they are for tests.

pub mod conformance;
pub mod differential;
pub mod gen;
pub mod streams;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use dsl::{Catalog, FieldType, SourceFile, StreamSchema, TableDecl};
use engine::Nfa;

/// The repository root.
pub fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().nth(2).expect("engine/testkit/ is in the repository").to_owned()
}

/// The streams of a config file (`[streams.NAME]` with `schema` and `timestamp_field`) and its
/// reference tables (`[tables.NAME]`).
pub fn catalog_from(config: &Path) -> Catalog {
    let text = std::fs::read_to_string(config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: not TOML: {e}", config.display()));
    let base = config.parent().expect("config has a directory");
    let mut catalog = Catalog::default();
    let streams = table.get("streams").and_then(|s| s.as_table()).expect("config has [streams]");
    for (name, s) in streams {
        let schema = s.get("schema").and_then(|v| v.as_str()).expect("stream has a schema");
        let ts = s.get("timestamp_field").and_then(|v| v.as_str());
        let path = base.join(schema);
        let json = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let schema =
            StreamSchema::from_avro_json(name, &json, ts).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        catalog.insert(schema);
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

/// The catalog the language tests use (`testdata/dsl/tripline.toml`): the sample streams and
/// `cep_events`, the event of FlinkCEP's test suite.
pub fn test_catalog() -> Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
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

/// The first pattern of `text`, compiled against [`test_catalog`]; panics with the
/// diagnostics if it does not compile.
pub fn compile_one(text: &str) -> Arc<Nfa> {
    let compiled = dsl::compile_source(&SourceFile::new("t.tl", text), &test_catalog());
    assert!(compiled.is_ok(), "{:?}", compiled.diagnostics);
    Arc::new(compiled.patterns.into_iter().next().expect("one pattern").nfa)
}
