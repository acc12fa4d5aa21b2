//! Reference tables' contents (`[tables.NAME]`, see docs/service.md, "Reference data"): read
//! from a JSON file, or entry by entry from a compacted topic's records, into the engine's
//! [`RefTable`]s. No I/O beyond reading the file a table names.

use std::path::Path;
use std::sync::Arc;

use engine::{RefData, RefTable, TableKind, Value};
use serde_json::Value as Json;

use super::config::{Config, TableConfig, TableKindConfig, ValueType};
use crate::error::{Error, Result};

fn kind(t: &TableConfig) -> TableKind {
    match t.kind {
        TableKindConfig::List => TableKind::List,
        TableKindConfig::Map => TableKind::Map,
    }
}

/// A key as the table's key type: text, or a whole number (written as a number or as text,
/// such as a JSON object's keys).
pub fn key_of(t: &TableConfig, key: &str, as_number: Option<&Json>) -> std::result::Result<Value, String> {
    match t.key {
        ValueType::Int => match as_number.and_then(Json::as_i64) {
            Some(n) => Ok(Value::Int(n)),
            None => key.trim().parse::<i64>().map(Value::Int).map_err(|_| format!("key `{key}` is not a whole number")),
        },
        _ => Ok(Value::str(key)),
    }
}

/// A JSON value as the map's value type.
pub fn value_of(t: &TableConfig, v: &Json) -> std::result::Result<Value, String> {
    let ty = t.value.unwrap_or(ValueType::String);
    match (ty, v) {
        (_, Json::Null) => Ok(Value::Null),
        (ValueType::String, Json::String(s)) => Ok(Value::str(s)),
        (ValueType::Int, Json::Number(n)) if n.is_i64() => Ok(Value::Int(n.as_i64().unwrap_or_default())),
        (ValueType::Double, Json::Number(n)) => Ok(Value::Float(n.as_f64().unwrap_or_default())),
        (ValueType::Boolean, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (ty, v) => Err(format!("{v} is not {}", ty.field_type().describe())),
    }
}

/// The table of `t`'s file (an array of keys for a list, an object of key to value for a map),
/// `base` being the config file's directory.
pub fn load_file(name: &str, t: &TableConfig, base: &Path) -> Result<RefTable> {
    let Some(file) = &t.file else { return Ok(RefTable::new(kind(t))) };
    let path = base.join(file);
    let at = |what: String| Error::usage(format!("table `{name}`: {}: {what}", path.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| at(format!("cannot read it: {e}")))?;
    let json: Json = serde_json::from_str(&text).map_err(|e| at(format!("not JSON: {e}")))?;
    from_json(t, &json).map_err(at)
}

/// The table `json` holds: an array of keys for a list, an object of key to value for a map.
pub fn from_json(t: &TableConfig, json: &Json) -> std::result::Result<RefTable, String> {
    let mut table = RefTable::new(kind(t));
    match (t.kind, json) {
        (TableKindConfig::List, Json::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let key = match item {
                    Json::String(s) if t.key == ValueType::String => key_of(t, s, None),
                    Json::Number(_) if t.key == ValueType::Int => key_of(t, &item.to_string(), Some(item)),
                    other => Err(format!("{other} is not {}", t.key.field_type().describe())),
                }
                .map_err(|e| format!("item {}: {e}", i + 1))?;
                table.insert(key, Value::Bool(true)).map_err(|e| format!("item {}: {e:?}", i + 1))?;
            }
        }
        (TableKindConfig::Map, Json::Object(entries)) => {
            for (k, v) in entries {
                let key = key_of(t, k, None).map_err(|e| format!("entry `{k}`: {e}"))?;
                let value = value_of(t, v).map_err(|e| format!("entry `{k}`: {e}"))?;
                table.insert(key, value).map_err(|e| format!("entry `{k}`: {e:?}"))?;
            }
        }
        (TableKindConfig::List, _) => return Err("a list's contents are a JSON array of keys".into()),
        (TableKindConfig::Map, _) => return Err("a map's contents are a JSON object of key to value".into()),
    }
    Ok(table)
}

/// One change of a table read from its topic: the entry's key and its new value (`None`:
/// removed).
pub type Change = (Value, Option<Value>);

/// The change a record of `t`'s topic makes: its key is the entry's key, its value the JSON
/// value (for a list, anything but null adds the key), no value (a tombstone) removes it.
pub fn change_of(t: &TableConfig, key: Option<&[u8]>, value: Option<&[u8]>) -> std::result::Result<Change, String> {
    let key = key.ok_or("a record without a key")?;
    let key = std::str::from_utf8(key).map_err(|_| "a key that is not UTF-8".to_owned())?;
    let key = key_of(t, key, None)?;
    let Some(bytes) = value else { return Ok((key, None)) };
    let json: Json = serde_json::from_slice(bytes).map_err(|e| format!("a value that is not JSON: {e}"))?;
    match t.kind {
        TableKindConfig::List if json.is_null() => Ok((key, None)),
        TableKindConfig::List => Ok((key, Some(Value::Bool(true)))),
        TableKindConfig::Map => Ok((key, Some(value_of(t, &json)?))),
    }
}

/// Every configured table, file tables with their contents and topic tables empty (their
/// topics fill them).
pub fn load(cfg: &Config, config_path: &Path) -> Result<RefData> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut data = RefData::default();
    for (name, t) in &cfg.tables {
        data.set(name.clone(), Arc::new(load_file(name, t, base)?));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(kind: &str, key: &str, value: Option<&str>, file: &str) -> TableConfig {
        let value = value.map(|v| format!("value = \"{v}\"\n")).unwrap_or_default();
        toml::from_str(&format!("kind = \"{kind}\"\nkey = \"{key}\"\n{value}file = \"{file}\"\n")).expect("a table")
    }

    #[test]
    fn files_load_as_lists_and_maps_and_bad_entries_say_where() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("l.json"), r#"["IR", "KP"]"#).expect("file");
        std::fs::write(dir.path().join("m.json"), r#"{"ACC-1": 5000.5, "ACC-2": 10}"#).expect("file");
        std::fs::write(dir.path().join("i.json"), r#"[7, 9]"#).expect("file");
        std::fs::write(dir.path().join("bad.json"), r#"{"ACC-1": "many"}"#).expect("file");
        let l = load_file("l", &table("list", "string", None, "l.json"), dir.path()).expect("list");
        assert!(l.contains(&Value::str("KP")) && !l.contains(&Value::str("RU")));
        let m = load_file("m", &table("map", "string", Some("double"), "m.json"), dir.path()).expect("map");
        assert_eq!(m.get(&Value::str("ACC-2")), Some(&Value::Float(10.0)));
        let i = load_file("i", &table("list", "int", None, "i.json"), dir.path()).expect("ints");
        assert!(i.contains(&Value::Int(9)) && !i.contains(&Value::str("9")));
        let e = load_file("bad", &table("map", "string", Some("double"), "bad.json"), dir.path()).expect_err("bad");
        assert!(e.to_string().contains("table `bad`") && e.to_string().contains("entry `ACC-1`"), "{e}");
        let e = load_file("l", &table("map", "string", Some("string"), "l.json"), dir.path()).expect_err("shape");
        assert!(e.to_string().contains("JSON object"), "{e}");
        let e = load_file("l", &table("list", "int", None, "l.json"), dir.path()).expect_err("texts");
        assert!(e.to_string().contains("item 1") && e.to_string().contains("whole number"), "{e}");
        let e = load_file("x", &table("list", "string", None, "missing.json"), dir.path()).expect_err("missing");
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn topic_records_are_changes() {
        let t = table("map", "string", Some("string"), "x");
        assert_eq!(change_of(&t, Some(b"A"), Some(b"\"LOW\"")), Ok((Value::str("A"), Some(Value::str("LOW")))));
        assert_eq!(change_of(&t, Some(b"A"), None), Ok((Value::str("A"), None)));
        assert!(change_of(&t, Some(b"A"), Some(b"3")).is_err());
        assert!(change_of(&t, None, Some(b"\"x\"")).is_err());
        let l = table("list", "int", None, "x");
        assert_eq!(change_of(&l, Some(b"42"), Some(b"true")), Ok((Value::Int(42), Some(Value::Bool(true)))));
        assert!(change_of(&l, Some(b"x"), Some(b"true")).is_err());
    }
}
