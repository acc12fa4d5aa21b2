//! Records to engine events: a JSON value (the JSON-lines export format) decoded against the
//! stream's schema. The reference decoder of the project: replays of files and the generic Avro
//! path decode through it, and so do the tests; the service's direct Avro decoder converts each
//! field as [`json_field`] does, and is tested against it. Every problem is an [`EventError`]
//! that names the field.

use engine::{Event, TypeId, Value};
use serde_json::Value as Json;

use crate::schema::{FieldType, StreamField, StreamSchema};

/// Why a record is not an event of its stream. The messages name the field and are shown to
/// users as they are.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    #[error("stream `{stream}` has no record type `{type_name}` (it has: {})", known.join(", "))]
    UnknownType { stream: String, type_name: String, known: Vec<String> },
    #[error("stream `{stream}` has several record types: say which with \"type\"")]
    TypeRequired { stream: String },
    #[error("the record is not a JSON object")]
    NotAnObject,
    #[error("field `{field}` is missing")]
    MissingField { field: String },
    #[error("field `{field}` should be {}, found {found}", expected.describe())]
    WrongType { field: String, expected: FieldType, found: Json },
    #[error("field `{field}`: \"{value}\" is not one of {}", symbols.join(", "))]
    NotASymbol { field: String, value: String, symbols: Vec<String> },
    #[error("`{key}` is not a field of record type `{record_type}`")]
    UnknownField { key: String, record_type: String },
    #[error("the event-time field `{field}` is null")]
    NullTimestamp { field: String },
    #[error("stream `{stream}` has no timestamp_field in the config")]
    NoTimestampField { stream: String },
}

/// What kind of problem an [`EventError`] is, without its details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventErrorKind {
    UnknownType,
    TypeRequired,
    NotAnObject,
    MissingField,
    WrongType,
    NotASymbol,
    UnknownField,
    /// The record has no event time: its timestamp field is null (or absent).
    NullTimestamp,
    /// The stream has no event time at all: no `timestamp_field` is configured.
    NoTimestampField,
}

impl EventErrorKind {
    /// A problem with the event time ([`EventErrorKind::NullTimestamp`] or
    /// [`EventErrorKind::NoTimestampField`]) rather than with the record's fields.
    pub fn is_timestamp(self) -> bool {
        matches!(self, EventErrorKind::NullTimestamp | EventErrorKind::NoTimestampField)
    }
}

impl EventError {
    pub fn kind(&self) -> EventErrorKind {
        match self {
            EventError::UnknownType { .. } => EventErrorKind::UnknownType,
            EventError::TypeRequired { .. } => EventErrorKind::TypeRequired,
            EventError::NotAnObject => EventErrorKind::NotAnObject,
            EventError::MissingField { .. } => EventErrorKind::MissingField,
            EventError::WrongType { .. } => EventErrorKind::WrongType,
            EventError::NotASymbol { .. } => EventErrorKind::NotASymbol,
            EventError::UnknownField { .. } => EventErrorKind::UnknownField,
            EventError::NullTimestamp { .. } => EventErrorKind::NullTimestamp,
            EventError::NoTimestampField { .. } => EventErrorKind::NoTimestampField,
        }
    }
}

/// Decodes one record of `schema`'s record type `type_name` (optional when the stream has one
/// type). `seq` is the event's coordinate (line number, offset).
///
/// Strict: a field of the record type that is missing (unless nullable), of the wrong JSON kind
/// or not one of its enum's symbols, and a key that is no field of the record type, are errors;
/// fields patterns cannot read (`FieldType::Unsupported`) are null. Timestamps are scaled to
/// milliseconds. The event time is the stream's timestamp field, which must not be null.
pub fn json_event(schema: &StreamSchema, type_name: Option<&str>, value: &Json, seq: u64) -> Result<Event, EventError> {
    let kind = match type_name {
        Some(t) => schema.record_type(t).ok_or_else(|| EventError::UnknownType {
            stream: schema.name.clone(),
            type_name: t.to_owned(),
            known: schema.types.iter().map(|t| t.name.clone()).collect(),
        })?,
        None if schema.types.len() == 1 => TypeId(0),
        None => return Err(EventError::TypeRequired { stream: schema.name.clone() }),
    };
    let obj = value.as_object().ok_or(EventError::NotAnObject)?;
    let mut fields = vec![Value::Null; schema.fields.len()];
    for (i, f) in schema.fields.iter().enumerate() {
        if !f.in_types[kind.index()] {
            continue;
        }
        fields[i] = json_field(f, f.path.split('.').try_fold(value, |v, seg| v.get(seg)))?;
    }
    for k in obj.keys() {
        if !schema.fields.iter().any(|f| f.in_types[kind.index()] && f.path.split('.').next() == Some(k)) {
            return Err(EventError::UnknownField {
                key: k.clone(),
                record_type: schema.types[kind.index()].name.clone(),
            });
        }
    }
    let ts = match schema.timestamp_field {
        Some(t) => match &fields[t.index()] {
            Value::Int(ms) => *ms,
            _ => return Err(EventError::NullTimestamp { field: schema.fields[t.index()].path.clone() }),
        },
        None => return Err(EventError::NoTimestampField { stream: schema.name.clone() }),
    };
    Ok(Event { seq, ts, kind, fields: fields.into() })
}

/// The value of field `f` of an event, given what its path holds in the record's JSON form
/// (`None`: the path is absent): the per-field checks and conversions of [`json_event`] (a
/// missing or null value of a nullable field is null; timestamps scaled to milliseconds; text
/// checked against the enum's symbols; fields patterns cannot read are null). Other decoders
/// use it to convert the same way.
pub fn json_field(f: &StreamField, v: Option<&Json>) -> Result<Value, EventError> {
    let v = match v {
        None | Some(Json::Null) if f.nullable => return Ok(Value::Null),
        None => return Err(EventError::MissingField { field: f.path.clone() }),
        Some(v) => v,
    };
    Ok(match (f.ty, v) {
        (FieldType::Bool, Json::Bool(b)) => Value::Bool(*b),
        (FieldType::Int, Json::Number(n)) if n.is_i64() => Value::Int(n.as_i64().unwrap_or(0)),
        (FieldType::Timestamp, Json::Number(n)) if n.is_i64() => {
            Value::Int(n.as_i64().unwrap_or(0) / f.time_divisor.max(1))
        }
        (FieldType::Float, Json::Number(n)) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        (FieldType::Str, Json::String(s)) => {
            if let Some(sym) = &f.symbols {
                if !sym.contains(s) {
                    return Err(EventError::NotASymbol {
                        field: f.path.clone(),
                        value: s.clone(),
                        symbols: sym.clone(),
                    });
                }
            }
            Value::str(s)
        }
        (FieldType::Unsupported, _) => Value::Null,
        (t, v) => return Err(EventError::WrongType { field: f.path.clone(), expected: t, found: v.clone() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: &str = r#"[
      {"type": "record", "name": "Login", "namespace": "acme", "fields": [
        {"name": "user", "type": "string"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "ok", "type": "boolean"},
        {"name": "tries", "type": ["null", "int"]},
        {"name": "where", "type": {"type": "record", "name": "Place", "fields": [
          {"name": "country", "type": {"type": "enum", "name": "Country", "symbols": ["FR", "DE"]}}]}}]},
      {"type": "record", "name": "Logout", "namespace": "acme", "fields": [
        {"name": "user", "type": "string"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "score", "type": "double"}]}
    ]"#;

    fn schema(ts: Option<&str>) -> StreamSchema {
        StreamSchema::from_avro_json("logins", SCHEMA, ts).expect("schema")
    }

    fn login() -> Json {
        json!({"user": "ann", "at": 5_000_000, "ok": true, "tries": null, "where": {"country": "FR"}})
    }

    fn err(schema: &StreamSchema, type_name: Option<&str>, value: Json) -> (EventErrorKind, String) {
        let e = json_event(schema, type_name, &value, 1).expect_err("refused");
        (e.kind(), e.to_string())
    }

    #[test]
    fn a_valid_record_decodes_with_its_event_time_in_ms() {
        let s = schema(Some("at"));
        let e = json_event(&s, Some("Login"), &login(), 7).expect("decodes");
        assert_eq!((e.seq, e.ts, e.kind), (7, 5_000, TypeId(0)));
        let field = |p: &str| e.field(s.field(p).expect("field")).clone();
        assert_eq!(field("user"), Value::str("ann"));
        assert_eq!(field("ok"), Value::Bool(true));
        assert_eq!(field("tries"), Value::Null);
        assert_eq!(field("where.country"), Value::str("FR"));
        assert_eq!(field("score"), Value::Null, "not a field of Login");
        let out = json_event(&s, Some("Logout"), &json!({"user": "bob", "at": 9_000, "score": 2}), 8).expect("decodes");
        assert_eq!(out.field(s.field("score").expect("score")), &Value::Float(2.0));
    }

    #[test]
    fn every_problem_has_its_kind_and_message() {
        use EventErrorKind as K;
        let s = schema(Some("at"));
        let cases = [
            (
                Some("Nope"),
                login(),
                K::UnknownType,
                "stream `logins` has no record type `Nope` (it has: Login, Logout)",
            ),
            (None, login(), K::TypeRequired, "stream `logins` has several record types: say which with \"type\""),
            (Some("Login"), json!([1]), K::NotAnObject, "the record is not a JSON object"),
            (
                Some("Login"),
                json!({"at": 1, "ok": true, "where": {"country": "FR"}}),
                K::MissingField,
                "field `user` is missing",
            ),
            (
                Some("Login"),
                json!({"user": "ann", "at": 1.5, "ok": true, "where": {"country": "FR"}}),
                K::WrongType,
                "field `at` should be a timestamp, found 1.5",
            ),
            (
                Some("Login"),
                json!({"user": "ann", "at": 1, "ok": true, "where": {"country": "UK"}}),
                K::NotASymbol,
                "field `where.country`: \"UK\" is not one of FR, DE",
            ),
            (
                Some("Login"),
                json!({"user": "ann", "at": 1, "ok": true, "where": {"country": "FR"}, "score": 1.0}),
                K::UnknownField,
                "`score` is not a field of record type `Login`",
            ),
        ];
        for (type_name, value, kind, message) in cases {
            assert_eq!(err(&s, type_name, value), (kind, message.to_owned()));
        }
        assert!(!K::MissingField.is_timestamp());
    }

    #[test]
    fn a_record_without_event_time_is_a_timestamp_problem() {
        let ticks = r#"{"type": "record", "name": "Tick", "fields": [{"name": "at", "type": ["null", "long"]}]}"#;
        let nullable_ts = StreamSchema::from_avro_json("ticks", ticks, Some("at")).expect("schema");
        for value in [json!({"at": null}), json!({})] {
            let (kind, msg) = err(&nullable_ts, None, value);
            assert_eq!((kind, msg.as_str()), (EventErrorKind::NullTimestamp, "the event-time field `at` is null"));
            assert!(kind.is_timestamp());
        }
        assert_eq!(json_event(&nullable_ts, None, &json!({"at": 3}), 1).map(|e| e.ts), Ok(3));
        let (kind, msg) = err(&schema(None), Some("Login"), login());
        assert_eq!(
            (kind, msg.as_str()),
            (EventErrorKind::NoTimestampField, "stream `logins` has no timestamp_field in the config")
        );
        assert!(kind.is_timestamp());
    }
}
