//! Records to engine events: a JSON value (the JSON-lines export format) decoded against the
//! stream's schema. Every problem is a reason that names the field.

use dsl::{FieldType, StreamSchema};
use engine::{Event, TypeId, Value};
use serde_json::Value as Json;

/// Decodes one record of `schema`'s record type `type_name` (optional when the stream has one
/// type). `seq` is the event's coordinate (line number, offset).
pub fn json_event(schema: &StreamSchema, type_name: Option<&str>, value: &Json, seq: u64) -> Result<Event, String> {
    let kind = match type_name {
        Some(t) => schema.record_type(t).ok_or_else(|| {
            let names: Vec<&str> = schema.types.iter().map(|t| t.name.as_str()).collect();
            format!("stream `{}` has no record type `{t}` (it has: {})", schema.name, names.join(", "))
        })?,
        None if schema.types.len() == 1 => TypeId(0),
        None => return Err(format!("stream `{}` has several record types: say which with \"type\"", schema.name)),
    };
    let obj = value.as_object().ok_or("the record is not a JSON object")?;
    let mut fields = vec![Value::Null; schema.fields.len()];
    for (i, f) in schema.fields.iter().enumerate() {
        if !f.in_types[kind.index()] {
            continue;
        }
        let v = f.path.split('.').try_fold(value, |v, seg| v.get(seg));
        let v = match v {
            None | Some(Json::Null) if f.nullable => continue,
            None => return Err(format!("field `{}` is missing", f.path)),
            Some(v) => v,
        };
        fields[i] = match (f.ty, v) {
            (FieldType::Bool, Json::Bool(b)) => Value::Bool(*b),
            (FieldType::Int, Json::Number(n)) if n.is_i64() => Value::Int(n.as_i64().unwrap_or(0)),
            (FieldType::Timestamp, Json::Number(n)) if n.is_i64() => {
                Value::Int(n.as_i64().unwrap_or(0) / f.time_divisor.max(1))
            }
            (FieldType::Float, Json::Number(n)) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            (FieldType::Str, Json::String(s)) => {
                if let Some(sym) = &f.symbols {
                    if !sym.contains(s) {
                        return Err(format!("field `{}`: \"{s}\" is not one of {}", f.path, sym.join(", ")));
                    }
                }
                Value::str(s)
            }
            (FieldType::Unsupported, _) => Value::Null,
            (t, v) => return Err(format!("field `{}` should be {}, found {v}", f.path, t.describe())),
        };
    }
    for k in obj.keys() {
        if !schema.fields.iter().any(|f| f.in_types[kind.index()] && f.path.split('.').next() == Some(k)) {
            return Err(format!("`{k}` is not a field of record type `{}`", schema.types[kind.index()].name));
        }
    }
    let ts = match schema.timestamp_field {
        Some(t) => match &fields[t.index()] {
            Value::Int(ms) => *ms,
            _ => return Err(format!("the event-time field `{}` is null", schema.fields[t.index()].path)),
        },
        None => return Err(format!("stream `{}` has no timestamp_field in the config", schema.name)),
    };
    Ok(Event { seq, ts, kind, fields: fields.into() })
}
