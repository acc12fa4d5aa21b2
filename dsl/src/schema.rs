//! Stream schemas as the checker and the engine see them: a flat table of fields (nested records
//! become dotted paths) shared by the stream's record types, each field with a scalar type.
//! Built from Avro schemas; a stream whose schema is a union of records has several record types.

use std::collections::BTreeMap;
use std::sync::Arc;

use apache_avro::schema::{Name, Schema};
use engine::{FieldId, TableKind, TypeId};

/// The type of a field, as far as patterns are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldType {
    Bool,
    Int,
    Float,
    Str,
    /// Milliseconds since the epoch.
    Timestamp,
    /// A field patterns cannot read (array, map, bytes, a union of several types).
    Unsupported,
}

impl FieldType {
    pub fn describe(self) -> &'static str {
        match self {
            FieldType::Bool => "a boolean",
            FieldType::Int => "a whole number",
            FieldType::Float => "a number",
            FieldType::Str => "text",
            FieldType::Timestamp => "a timestamp",
            FieldType::Unsupported => "an unsupported value",
        }
    }
}

/// One field of a stream's field table.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamField {
    /// `amount`, or `merchant.country` for a nested record.
    pub path: String,
    pub ty: FieldType,
    pub nullable: bool,
    /// Enum symbols, for enum fields (read as text).
    pub symbols: Option<Vec<String>>,
    /// What the Avro schema says, for messages about unsupported fields.
    pub avro: String,
    /// Which record types have this field (by `TypeId`).
    pub in_types: Vec<bool>,
    /// Record types disagree on its type.
    pub conflict: bool,
    /// Micro- or nanosecond timestamp that decoders scale to milliseconds (1, 1000 or 1000000).
    pub time_divisor: i64,
}

/// One record type of a stream.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordType {
    /// Short name (`Login`).
    pub name: String,
    /// Full name (`com.acme.Login`).
    pub full_name: String,
}

/// A stream: name, record types, field table, timestamp field.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSchema {
    pub name: String,
    pub types: Vec<RecordType>,
    pub fields: Vec<StreamField>,
    pub timestamp_field: Option<FieldId>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("invalid Avro schema: {0}")]
    Avro(String),
    #[error("the schema must be a record or a union of records, not {0}")]
    NotARecord(String),
    #[error("timestamp field `{field}` is not in every record type of the schema{hint}")]
    NoTimestamp { field: String, hint: String },
    #[error("timestamp field `{field}` is {found}; it must be a long with logicalType timestamp-millis (or -micros), or a long of epoch milliseconds")]
    BadTimestamp { field: String, found: String },
}

impl StreamSchema {
    /// Parses an Avro schema (JSON text) for stream `name`.
    pub fn from_avro_json(name: &str, json: &str, timestamp_field: Option<&str>) -> Result<Self, SchemaError> {
        let schema = Schema::parse_str(json).map_err(|e| SchemaError::Avro(e.to_string()))?;
        Self::from_avro(name, &schema, timestamp_field)
    }

    /// Builds the field table of stream `name` from a parsed Avro schema.
    pub fn from_avro(name: &str, schema: &Schema, timestamp_field: Option<&str>) -> Result<Self, SchemaError> {
        let mut names = BTreeMap::new();
        collect_names(schema, &mut names);
        let records: Vec<&Schema> = match schema {
            Schema::Record(_) => vec![schema],
            Schema::Union(u) => {
                let mut v = Vec::new();
                for s in u.variants() {
                    let s = resolve(s, &names);
                    match s {
                        Schema::Record(_) => v.push(s),
                        Schema::Null => {}
                        other => return Err(SchemaError::NotARecord(describe_avro(other))),
                    }
                }
                if v.is_empty() {
                    return Err(SchemaError::NotARecord("a union without records".into()));
                }
                v
            }
            other => return Err(SchemaError::NotARecord(describe_avro(other))),
        };
        let mut out =
            StreamSchema { name: name.to_owned(), types: Vec::new(), fields: Vec::new(), timestamp_field: None };
        let ntypes = records.len();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        for (t, rec) in records.iter().enumerate() {
            let Schema::Record(r) = rec else { continue };
            out.types.push(RecordType { name: r.name.name().to_owned(), full_name: r.name.fullname(None) });
            let mut flat = Vec::new();
            flatten(rec, "", false, &names, &mut flat, 0);
            for f in flat {
                match index.get(&f.path) {
                    Some(&i) => {
                        let existing = &mut out.fields[i];
                        if existing.ty != f.ty {
                            existing.conflict = true;
                        }
                        existing.nullable |= f.nullable;
                        existing.in_types[t] = true;
                    }
                    None => {
                        let mut f = f;
                        f.in_types = vec![false; ntypes];
                        f.in_types[t] = true;
                        index.insert(f.path.clone(), out.fields.len());
                        out.fields.push(f);
                    }
                }
            }
        }
        if let Some(ts) = timestamp_field {
            match out.field(ts) {
                Some(id) if out.fields[id.index()].in_types.iter().all(|b| *b) => {
                    let f = &out.fields[id.index()];
                    if f.ty != FieldType::Timestamp && f.ty != FieldType::Int {
                        return Err(SchemaError::BadTimestamp { field: ts.to_owned(), found: f.avro.clone() });
                    }
                    out.timestamp_field = Some(id);
                }
                _ => {
                    let hint = crate::diag::did_you_mean(ts, out.fields.iter().map(|f| f.path.as_str()))
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    return Err(SchemaError::NoTimestamp { field: ts.to_owned(), hint });
                }
            }
        }
        Ok(out)
    }

    pub fn field(&self, path: &str) -> Option<FieldId> {
        self.fields.iter().position(|f| f.path == path).map(|i| FieldId(i as u16))
    }

    pub fn record_type(&self, name: &str) -> Option<TypeId> {
        self.types.iter().position(|t| t.name == name || t.full_name == name).map(|i| TypeId(i as u16))
    }

    pub fn field_names(&self) -> Vec<String> {
        self.fields.iter().map(|f| f.path.clone()).collect()
    }
}

fn collect_names<'a>(s: &'a Schema, names: &mut BTreeMap<String, &'a Schema>) {
    match s {
        Schema::Record(r) => {
            names.insert(r.name.fullname(None), s);
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.fullname(None), s);
        }
        Schema::Fixed(f) => {
            names.insert(f.name.fullname(None), s);
        }
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        _ => {}
    }
}

fn resolve<'a>(s: &'a Schema, names: &BTreeMap<String, &'a Schema>) -> &'a Schema {
    match s {
        Schema::Ref { name } => names.get(&full(name)).copied().unwrap_or(s),
        s => s,
    }
}

fn full(n: &Name) -> String {
    n.fullname(None)
}

fn describe_avro(s: &Schema) -> String {
    match s {
        Schema::Null => "null".into(),
        Schema::Boolean => "boolean".into(),
        Schema::Int => "int".into(),
        Schema::Long => "long".into(),
        Schema::Float => "float".into(),
        Schema::Double => "double".into(),
        Schema::Bytes => "bytes".into(),
        Schema::String => "string".into(),
        Schema::Array(_) => "an array".into(),
        Schema::Map(_) => "a map".into(),
        Schema::Union(_) => "a union".into(),
        Schema::Record(r) => format!("record {}", r.name.name()),
        Schema::Enum(e) => format!("enum {}", e.name.name()),
        Schema::Fixed(f) => format!("fixed {}", f.name.name()),
        Schema::Decimal(_) | Schema::BigDecimal => "decimal".into(),
        Schema::Uuid(_) => "uuid".into(),
        Schema::Date => "date".into(),
        Schema::TimeMillis | Schema::TimeMicros => "time of day".into(),
        Schema::TimestampMillis | Schema::LocalTimestampMillis => "timestamp-millis".into(),
        Schema::TimestampMicros | Schema::LocalTimestampMicros => "timestamp-micros".into(),
        Schema::TimestampNanos | Schema::LocalTimestampNanos => "timestamp-nanos".into(),
        Schema::Duration(_) => "duration".into(),
        Schema::Ref { name } => name.name().to_owned(),
    }
}

fn scalar(s: &Schema) -> (FieldType, Option<Vec<String>>, i64) {
    match s {
        Schema::Boolean => (FieldType::Bool, None, 1),
        Schema::Int | Schema::Long | Schema::Date | Schema::TimeMillis | Schema::TimeMicros => {
            (FieldType::Int, None, 1)
        }
        Schema::Float | Schema::Double | Schema::Decimal(_) | Schema::BigDecimal => (FieldType::Float, None, 1),
        Schema::String | Schema::Uuid(_) => (FieldType::Str, None, 1),
        Schema::Enum(e) => (FieldType::Str, Some(e.symbols.clone()), 1),
        Schema::TimestampMillis | Schema::LocalTimestampMillis => (FieldType::Timestamp, None, 1),
        Schema::TimestampMicros | Schema::LocalTimestampMicros => (FieldType::Timestamp, None, 1000),
        Schema::TimestampNanos | Schema::LocalTimestampNanos => (FieldType::Timestamp, None, 1_000_000),
        _ => (FieldType::Unsupported, None, 1),
    }
}

const MAX_DEPTH: usize = 16;

fn flatten(
    s: &Schema,
    prefix: &str,
    nullable: bool,
    names: &BTreeMap<String, &Schema>,
    out: &mut Vec<StreamField>,
    depth: usize,
) {
    let Schema::Record(r) = s else { return };
    for f in &r.fields {
        let path = if prefix.is_empty() { f.name.clone() } else { format!("{prefix}.{}", f.name) };
        let mut schema = resolve(&f.schema, names);
        let mut nullable = nullable;
        if let Schema::Union(u) = schema {
            let non_null: Vec<&Schema> = u.variants().iter().filter(|v| !matches!(v, Schema::Null)).collect();
            if non_null.len() == 1 && non_null.len() < u.variants().len() {
                nullable = true;
                schema = resolve(non_null[0], names);
            }
        }
        if matches!(schema, Schema::Record(_)) && depth < MAX_DEPTH {
            flatten(schema, &path, nullable, names, out, depth + 1);
            continue;
        }
        let (ty, symbols, time_divisor) = scalar(schema);
        out.push(StreamField {
            path,
            ty,
            nullable,
            symbols,
            avro: describe_avro(schema),
            in_types: Vec::new(),
            conflict: false,
            time_divisor,
        });
    }
}

/// The streams a pattern can read, and the reference tables it can read (`x in list NAME`,
/// `lookup(NAME, x)`), by name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub streams: BTreeMap<String, Arc<StreamSchema>>,
    /// Reference tables and lists: their declared shape only (contents are maintained apart,
    /// and are no part of a pattern: see `engine::refdata`).
    pub tables: BTreeMap<String, TableDecl>,
}

impl Catalog {
    pub fn insert(&mut self, s: StreamSchema) {
        self.streams.insert(s.name.clone(), Arc::new(s));
    }

    /// Declares (or redeclares) reference table `name`.
    pub fn insert_table(&mut self, name: impl Into<String>, decl: TableDecl) {
        self.tables.insert(name.into(), decl);
    }
}

/// A reference table as patterns see it (`[tables.NAME]` in the config): a list of keys, or a
/// map from keys to values; keys are whole numbers or text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableDecl {
    pub kind: TableKind,
    /// [`FieldType::Int`] or [`FieldType::Str`].
    pub key: FieldType,
    /// The values' type: `Some` for a [`TableKind::Map`], `None` for a list.
    pub value: Option<FieldType>,
}

impl TableDecl {
    /// A list of keys of type `key`.
    pub fn list(key: FieldType) -> Self {
        TableDecl { kind: TableKind::List, key, value: None }
    }

    /// A map from keys of type `key` to values of type `value`.
    pub fn map(key: FieldType, value: FieldType) -> Self {
        TableDecl { kind: TableKind::Map, key, value: Some(value) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_of_records_with_nested_and_nullable_fields() {
        let json = r#"[
          {"type":"record","name":"Login","namespace":"x","fields":[
            {"name":"account_id","type":"string"},
            {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"geo","type":["null",{"type":"record","name":"Geo","fields":[{"name":"lat","type":"double"}]}],"default":null}
          ]},
          {"type":"record","name":"Reset","namespace":"x","fields":[
            {"name":"account_id","type":"string"},
            {"name":"event_time","type":{"type":"long","logicalType":"timestamp-millis"}},
            {"name":"channel","type":{"type":"enum","name":"Channel","symbols":["WEB","APP"]}},
            {"name":"tags","type":{"type":"array","items":"string"}}
          ]}
        ]"#;
        let s = StreamSchema::from_avro_json("accounts", json, Some("event_time")).expect("valid");
        assert_eq!(s.types.len(), 2);
        let paths: Vec<_> = s.fields.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["account_id", "event_time", "geo.lat", "channel", "tags"]);
        let geo = &s.fields[2];
        assert!(geo.nullable && geo.in_types == [true, false]);
        assert_eq!(s.fields[3].symbols.as_deref(), Some(&["WEB".to_owned(), "APP".to_owned()][..]));
        assert_eq!(s.fields[4].ty, FieldType::Unsupported);
        assert_eq!(s.timestamp_field, Some(FieldId(1)));
        assert_eq!(s.record_type("x.Reset"), Some(TypeId(1)));
    }

    #[test]
    fn errors() {
        assert!(matches!(StreamSchema::from_avro_json("s", "\"string\"", None), Err(SchemaError::NotARecord(_))));
        assert!(matches!(StreamSchema::from_avro_json("s", "{", None), Err(SchemaError::Avro(_))));
        let rec = r#"{"type":"record","name":"R","fields":[{"name":"event_tme","type":"long"}]}"#;
        let err = StreamSchema::from_avro_json("s", rec, Some("event_time")).expect_err("missing");
        assert!(err.to_string().contains("did you mean `event_tme`"), "{err}");
    }
}
