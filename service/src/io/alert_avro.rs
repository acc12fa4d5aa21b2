//! Alerts as Avro (`outputs.alert_format = "avro"`): the alert schema (`service/avro/alert.avsc`)
//! and the conversion between an alert's JSON line (what the core renders and a replay writes)
//! and its Avro datum, both ways without loss: decoding a datum gives back the JSON line byte
//! for byte, so replays and audits compare Avro alerts as they compare JSON ones.

use std::sync::{Arc, OnceLock};

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use schema_registry_converter::blocking::schema_registry::{get_schema_by_id, post_schema, SrSettings};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::error::{Error, Kind, Result, ResultExt};

/// The alert schema, as registered.
pub const SCHEMA: &str = include_str!("../../avro/alert.avsc");

/// The alert schema's full name: a framed record whose writer schema has it is an alert.
pub const NAME: &str = "tripline.Alert";

/// The alert schema, parsed once.
pub fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| Schema::parse_str(SCHEMA).unwrap_or(Schema::Null))
}

/// A JSON object's entries in their order (serde_json's map sorts them).
struct Ordered<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Ordered<V>, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry()? {
                    out.push(e);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

/// An alert's JSON line, read in its order (see `core::alert::alert_line`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    alert_id: String,
    pattern: String,
    version: i64,
    hash: String,
    severity: String,
    mode: String,
    key: String,
    ts: i64,
    partition: i32,
    #[serde(rename = "match")]
    matched: Ordered<Vec<i64>>,
    partitions: Option<Ordered<Vec<i32>>>,
    fields: Ordered<Json>,
    message: String,
}

fn invalid(what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("not an alert: {what}"))
}

/// The Avro datum (no framing) of an alert's JSON line.
pub fn encode(line: &str) -> Result<Vec<u8>> {
    let l: Line = serde_json::from_str(line).map_err(invalid)?;
    let matched = l
        .matched
        .0
        .into_iter()
        .map(|(var, offsets)| {
            Avro::Record(vec![
                ("var".into(), Avro::String(var)),
                ("offsets".into(), Avro::Array(offsets.into_iter().map(Avro::Long).collect())),
            ])
        })
        .collect();
    let partitions = match l.partitions {
        None => Avro::Union(0, Box::new(Avro::Null)),
        Some(p) => Avro::Union(
            1,
            Box::new(Avro::Array(
                p.0.into_iter()
                    .map(|(var, ps)| {
                        Avro::Record(vec![
                            ("var".into(), Avro::String(var)),
                            ("partitions".into(), Avro::Array(ps.into_iter().map(Avro::Int).collect())),
                        ])
                    })
                    .collect(),
            )),
        ),
    };
    let mut fields = Vec::with_capacity(l.fields.0.len());
    for (name, v) in l.fields.0 {
        let value = match v {
            Json::Null => Avro::Union(0, Box::new(Avro::Null)),
            Json::Bool(b) => Avro::Union(1, Box::new(Avro::Boolean(b))),
            Json::Number(n) if n.is_i64() => Avro::Union(2, Box::new(Avro::Long(n.as_i64().unwrap_or_default()))),
            Json::Number(n) => match n.as_f64() {
                Some(x) if !n.is_u64() => Avro::Union(3, Box::new(Avro::Double(x))),
                _ => return Err(invalid(format!("field `{name}` is {n}, out of range"))),
            },
            Json::String(s) => Avro::Union(4, Box::new(Avro::String(s))),
            other => return Err(invalid(format!("field `{name}` is not a scalar: {other}"))),
        };
        fields.push(Avro::Record(vec![("name".into(), Avro::String(name)), ("value".into(), value)]));
    }
    let record = Avro::Record(vec![
        ("alert_id".into(), Avro::String(l.alert_id)),
        ("pattern".into(), Avro::String(l.pattern)),
        ("version".into(), Avro::Long(l.version)),
        ("hash".into(), Avro::String(l.hash)),
        ("severity".into(), Avro::String(l.severity)),
        ("mode".into(), Avro::String(l.mode)),
        ("key".into(), Avro::String(l.key)),
        ("ts".into(), Avro::TimestampMillis(l.ts)),
        ("partition".into(), Avro::Int(l.partition)),
        ("match".into(), Avro::Array(matched)),
        ("partitions".into(), partitions),
        ("fields".into(), Avro::Array(fields)),
        ("message".into(), Avro::String(l.message)),
    ]);
    apache_avro::writer::datum::GenericDatumWriter::builder(schema())
        .build()
        .and_then(|w| w.write_value_to_vec(record))
        .or_fail(Kind::Invalid, "the alert does not fit the alert schema")
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn field<'a>(record: &'a [(String, Avro)], name: &str) -> Result<&'a Avro> {
    record.iter().find(|(n, _)| n == name).map(|(_, v)| v).ok_or_else(|| invalid(format!("no field `{name}`")))
}

fn text(v: &Avro) -> Result<&str> {
    match v {
        Avro::String(s) => Ok(s),
        other => Err(invalid(format!("{other:?} is not text"))),
    }
}

fn long(v: &Avro) -> Result<i64> {
    match v {
        Avro::Long(n) | Avro::TimestampMillis(n) => Ok(*n),
        Avro::Int(n) => Ok(i64::from(*n)),
        other => Err(invalid(format!("{other:?} is not a number"))),
    }
}

fn items(v: &Avro) -> Result<&[Avro]> {
    match v {
        Avro::Array(a) => Ok(a),
        other => Err(invalid(format!("{other:?} is not a list"))),
    }
}

fn record(v: &Avro) -> Result<&[(String, Avro)]> {
    match v {
        Avro::Record(r) => Ok(r),
        other => Err(invalid(format!("{other:?} is not a record"))),
    }
}

/// `{"var":[n,...],...}` of a list of `{var, <list>}` records.
fn lists(out: &mut String, v: &Avro, list: &str) -> Result<()> {
    out.push('{');
    for (i, r) in items(v)?.iter().enumerate() {
        let r = record(r)?;
        let ns: Vec<String> =
            items(field(r, list)?)?.iter().map(|n| long(n).map(|n| n.to_string())).collect::<Result<_>>()?;
        out.push_str(&format!(
            "{}{}:[{}]",
            if i > 0 { "," } else { "" },
            json_str(text(field(r, "var")?)?),
            ns.join(",")
        ));
    }
    out.push('}');
    Ok(())
}

/// The JSON line of an alert datum written with `writer` (the alert schema, or an earlier or
/// later version of it): the line the service rendered, byte for byte.
pub fn decode(mut datum: &[u8], writer: &Schema) -> Result<String> {
    let v = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .build()
        .and_then(|r| r.read_value(&mut datum))
        .or_fail(Kind::Invalid, "the alert's Avro datum does not decode")?;
    let v = v.resolve(schema()).or_fail(Kind::Invalid, "the alert does not read as the alert schema")?;
    let r = record(&v)?;
    let mut s = String::with_capacity(256);
    s.push_str(&format!(
        "{{\"alert_id\":{},\"pattern\":{},\"version\":{},\"hash\":{},\"severity\":{},\"mode\":{},\"key\":{},\"ts\":{},\"partition\":{},\"match\":",
        json_str(text(field(r, "alert_id")?)?),
        json_str(text(field(r, "pattern")?)?),
        long(field(r, "version")?)?,
        json_str(text(field(r, "hash")?)?),
        json_str(text(field(r, "severity")?)?),
        json_str(text(field(r, "mode")?)?),
        json_str(text(field(r, "key")?)?),
        long(field(r, "ts")?)?,
        long(field(r, "partition")?)?,
    ));
    lists(&mut s, field(r, "match")?, "offsets")?;
    if let Avro::Union(_, p) = field(r, "partitions")? {
        if !matches!(**p, Avro::Null) {
            s.push_str(",\"partitions\":");
            lists(&mut s, p, "partitions")?;
        }
    }
    s.push_str(",\"fields\":{");
    for (i, f) in items(field(r, "fields")?)?.iter().enumerate() {
        let f = record(f)?;
        let value = match field(f, "value")? {
            Avro::Union(_, v) => &**v,
            v => v,
        };
        let value = match value {
            Avro::Null => "null".to_owned(),
            Avro::Boolean(b) => b.to_string(),
            Avro::Long(n) => n.to_string(),
            Avro::Double(x) => serde_json::Number::from_f64(*x).map_or_else(|| "null".to_owned(), |n| n.to_string()),
            Avro::String(t) => json_str(t),
            other => return Err(invalid(format!("field value {other:?}"))),
        };
        s.push_str(&format!("{}{}:{value}", if i > 0 { "," } else { "" }, json_str(text(field(f, "name")?)?)));
    }
    s.push_str(&format!("}},\"message\":{}}}", json_str(text(field(r, "message")?)?)));
    Ok(s)
}

/// Registers the alert schema under `subject` (`<topic>-value`); its id.
pub fn register(registry: &SrSettings, subject: &str) -> Result<u32> {
    let registered =
        post_schema(registry, subject.to_owned(), SuppliedSchema::new(None, SchemaType::Avro, SCHEMA.into())).map_err(
            |e| {
                Error::failed(format!(
                    "cannot register the alert schema as `{subject}`: {}",
                    e.cause.as_deref().unwrap_or(&e.error)
                ))
            },
        )?;
    Ok(registered.id)
}

/// Reads records that may be Avro alerts (or any Confluent-framed Avro record, or text): what
/// `tripline tail` and `tripline explain --alert` print and read.
pub struct Records {
    registry: Option<SrSettings>,
    schemas: std::collections::HashMap<u32, Arc<Schema>>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("registry", &self.registry.is_some())
            .field("schemas", &self.schemas.len())
            .finish()
    }
}

impl Records {
    /// `registry`: where framed records' writer schemas are found (`None`: framed records are
    /// an error).
    pub fn new(registry: Option<SrSettings>) -> Records {
        Records { registry, schemas: std::collections::HashMap::new() }
    }

    /// The record's text: an alert's JSON line, another Avro record as JSON, or the bytes as
    /// text when they are not Confluent-framed.
    pub fn text(&mut self, bytes: &[u8]) -> Result<String> {
        let [0, a, b, c, d, datum @ ..] = bytes else { return Ok(String::from_utf8_lossy(bytes).into_owned()) };
        let id = u32::from_be_bytes([*a, *b, *c, *d]);
        let writer = self.schema(id)?;
        let is_alert = matches!(&*writer, Schema::Record(r) if r.name.fullname(None) == NAME);
        if is_alert {
            return decode(datum, &writer);
        }
        let mut d = datum;
        let v = apache_avro::reader::datum::GenericDatumReader::builder(&writer)
            .build()
            .and_then(|r| r.read_value(&mut d))
            .or_fail_with(Kind::Invalid, || format!("schema id {id}: the Avro datum does not decode"))?;
        let json = Json::try_from(v).or_fail_with(Kind::Invalid, || format!("schema id {id}: not JSON"))?;
        Ok(json.to_string())
    }

    fn schema(&mut self, id: u32) -> Result<Arc<Schema>> {
        if let Some(s) = self.schemas.get(&id) {
            return Ok(s.clone());
        }
        let registry = self
            .registry
            .as_ref()
            .ok_or_else(|| Error::usage(format!("an Avro record (schema id {id}): set [registry] url to read it")))?;
        let registered = get_schema_by_id(id, registry).map_err(|e| {
            Error::failed(format!(
                "the schema registry has no schema id {id}: {}",
                e.cause.as_deref().unwrap_or(&e.error)
            ))
        })?;
        let schema =
            Arc::new(Schema::parse_str(&registered.schema).or_fail_with(Kind::Invalid, || format!("schema id {id}"))?);
        self.schemas.insert(id, schema.clone());
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../patterns/examples");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).expect("examples") {
            let p = e.expect("entry").path();
            if p.to_string_lossy().ends_with(".alerts.jsonl") {
                // The examples' expected alerts, made whole (their fields and messages are real).
                for l in std::fs::read_to_string(&p).expect("alerts").lines() {
                    let a: Json = serde_json::from_str(l).expect("JSON");
                    let (fields, matched) = (a["fields"].to_string(), a["match"].to_string());
                    out.push(format!(
                        "{{\"alert_id\":\"0123456789abcdef0123456789abcdef\",\"pattern\":{},\"version\":1,\"hash\":\"0011223344556677\",\"severity\":\"high\",\"mode\":\"live\",\"key\":{},\"ts\":1741102200000,\"partition\":0,\"match\":{matched},\"fields\":{fields},\"message\":{}}}",
                        a["pattern"], a["key"], a["message"]
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn every_example_alert_goes_to_avro_and_back_byte_for_byte() {
        assert!(matches!(schema(), Schema::Record(_)), "the alert schema parses");
        let lines = lines();
        assert!(lines.len() >= 20, "{}", lines.len());
        for line in &lines {
            let datum = encode(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(&decode(&datum, schema()).expect("decodes"), line);
        }
    }

    #[test]
    fn repartitioned_alerts_floats_nulls_and_text_survive() {
        let line = r#"{"alert_id":"00ff","pattern":"p","version":2,"hash":"abc","severity":"low","mode":"shadow","key":"K \"1\"","ts":-5,"partition":3,"match":{"z":[1,2],"a":[7]},"partitions":{"z":[3,1],"a":[0]},"fields":{"b":true,"n":null,"i":-3,"f":2.5,"g":1e+300,"h":3.0,"s":"é\n"},"message":"m {x}"}"#;
        let datum = encode(line).expect("encodes");
        assert_eq!(decode(&datum, schema()).expect("decodes"), line);
    }

    #[test]
    fn a_line_that_is_not_an_alert_is_refused_with_the_reason() {
        let e = encode(r#"{"pattern":"p"}"#).expect_err("refused");
        assert!(e.to_string().contains("not an alert"), "{e}");
        let e = encode(r#"{"alert_id":"1","pattern":"p","version":1,"hash":"h","severity":"low","mode":"live","key":"k","ts":1,"partition":0,"match":{},"fields":{"x":[1]},"message":""}"#)
            .expect_err("refused");
        assert!(e.to_string().contains("not a scalar"), "{e}");
        let mut r = Records::new(None);
        assert_eq!(r.text(b"{\"a\":1}").expect("text"), "{\"a\":1}");
        assert!(r.text(&[0, 0, 0, 0, 1, 2]).expect_err("no registry").to_string().contains("[registry] url"));
    }
}
